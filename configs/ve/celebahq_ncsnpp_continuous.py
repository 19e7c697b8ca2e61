"""NCSN++ on CelebA-HQ 1024x1024 with the continuous-time VE SDE. `data.tfrecords_path` is
the original authors' path, kept for equality; point it at your data."""

from configs.ve._ncsnpp_1024 import ncsnpp_1024_config


def get_config():
    return ncsnpp_1024_config(dataset='CelebAHQ',
                              tfrecords_path='/atlas/u/yangsong/celeba_hq/-r10.tfrecords',
                              reduce_mean=False)
