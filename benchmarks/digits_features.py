"""Reference figures of the offline digits feature extractor (`evaluation.digits_features`):
the classifier's accuracy and the distances between real and corrupted digits.

    OMP_NUM_THREADS=1 python benchmarks/digits_features.py
"""

import torch
import torch.nn.functional as F

from evaluation.digits_features import (_gaussian_blur, digits_images, digits_metrics,
                                        load_digits_classifier)

def main():
    """Reference figures: the classifier's accuracy and distances of real / corrupted digits."""
    import platform
    import time
    t0 = time.time()
    clf = load_digits_classifier()
    print(f"classifier: {clf.info}  ({time.time() - t0:.1f} s, threads={torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()})")
    x, _ = digits_images("all")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    a, b = x[perm[:len(x) // 2]], x[perm[len(x) // 2:]]

    def up(v):  # as training.data resizes DIGITS for the 16x16 configs
        return F.interpolate(v, size=(16, 16), mode="bilinear", align_corners=False)

    cases = {"real vs real": (b, a),
             "real 16x16 vs real 16x16": (up(b), up(a)),
             "real 16x16 vs real 8x8 (mismatched)": (up(b), a),
             "blurred (sigma = 1 px) vs real": (_gaussian_blur(b, 1.0), a),
             "uniform noise vs real": (torch.rand(b.shape, generator=g), a)}
    print(f"two halves of all 1797 digits (random split, seed 0): {len(b)} 'samples' vs {len(a)} reference;"
          f" last line: the 300 held-out digits vs the 1497 training digits (the default reference)")
    cases["held-out digits/test vs 'train'"] = (digits_images("test")[0], "train")
    for name, (s, ref) in cases.items():
        m = digits_metrics(s, ref, classifier=clf)
        print(f"{name:36s} digits_fid={m['digits_fid']:8.3f}  digits_kid={m['digits_kid_mean']:8.4f}"
              f" +- {m['digits_kid_std']:.4f}  mean_max_prob={m['mean_max_prob']:.3f}  "
              f"classifier_score={m['classifier_score']:.2f}")


if __name__ == "__main__":
    main()
