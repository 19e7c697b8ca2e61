"""NCSN++ on FFHQ 1024x1024 with the continuous-time VE SDE (unlike CelebA-HQ, the loss is
averaged over pixels: reduce_mean=True). `data.tfrecords_path` is the original authors' path."""

from configs.ve._ncsnpp_1024 import ncsnpp_1024_config


def get_config():
    return ncsnpp_1024_config(dataset='FFHQ',
                              tfrecords_path='/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords',
                              reduce_mean=True)
