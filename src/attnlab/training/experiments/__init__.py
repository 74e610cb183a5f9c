"""The experiments that show what the articles claim, each a module: the fixed-vector
bottleneck, architectures (parallel training), ablations (Vaswani Table 3), heads that
specialise (Michel et al. 2019), induction heads (Olsson et al. 2022); ``common`` holds what they
share. Nothing is imported here.
"""
