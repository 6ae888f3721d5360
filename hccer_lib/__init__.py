"""hccer_lib: the tested library behind the hccer study notebooks.

Preoperative prediction of early recurrence (ER) of hepatocellular carcinoma from
triple-phase CT (NC, ART, PV) and selected clinical data, re-implementing
Wang et al., IEEE Access 8 (2020), DOI 10.1109/ACCESS.2020.3011145.
"""

__version__ = "0.1.0"
