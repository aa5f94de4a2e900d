"""The numbers of He et al. 2015 that the code sets itself beside, in one place: the summary and
table commands print them next to ours, and the tests check our networks against them.
"""

# Table 1: multiply-adds (the paper's "FLOPs") x 10^9 of the ImageNet networks at 224x224.
TABLE1_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# Table 6: parameters (M) of the CIFAR-10 networks (option A shortcuts), and their depths.
TABLE6_MPARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
CIFAR_DEPTHS = tuple(TABLE6_MPARAMS)

# (data, depth, plain, shortcut, protocol) -> (top-1 error, top-5 error or None, where in the paper).
# ImageNet rows are the paper's v1 networks; plain nets have no shortcut.
ERRORS: dict[tuple, tuple[float, float | None, str]] = {
    ("imagenet2012", 18, True, None, "10crop"): (27.94, None, "Table 2"),
    ("imagenet2012", 18, False, "A", "10crop"): (27.88, None, "Table 2"),
    ("imagenet2012", 34, True, None, "10crop"): (28.54, 10.02, "Tables 2-3"),
    ("imagenet2012", 34, False, "A", "10crop"): (25.03, 7.76, "Tables 2-3"),
    ("imagenet2012", 34, False, "B", "10crop"): (24.52, 7.46, "Table 3"),
    ("imagenet2012", 34, False, "C", "10crop"): (24.19, 7.40, "Table 3"),
    ("imagenet2012", 50, False, "B", "10crop"): (22.85, 6.71, "Table 3"),
    ("imagenet2012", 101, False, "B", "10crop"): (21.75, 6.05, "Table 3"),
    ("imagenet2012", 152, False, "B", "10crop"): (21.43, 5.71, "Table 3"),
    ("imagenet2012", 34, False, "B", "multiscale"): (21.84, 5.71, "Table 4"),
    ("imagenet2012", 34, False, "C", "multiscale"): (21.53, 5.60, "Table 4"),
    ("imagenet2012", 50, False, "B", "multiscale"): (20.74, 5.25, "Table 4"),
    ("imagenet2012", 101, False, "B", "multiscale"): (19.87, 4.60, "Table 4"),
    ("imagenet2012", 152, False, "B", "multiscale"): (19.38, 4.49, "Table 4"),
    ("cifar10", 20, False, "A", "center"): (8.75, None, "Table 6"),
    ("cifar10", 32, False, "A", "center"): (7.51, None, "Table 6"),
    ("cifar10", 44, False, "A", "center"): (7.17, None, "Table 6"),
    ("cifar10", 56, False, "A", "center"): (6.97, None, "Table 6"),
    ("cifar10", 110, False, "A", "center"): (6.43, None, "Table 6"),
    ("cifar10", 1202, False, "A", "center"): (7.93, None, "Table 6"),
}
