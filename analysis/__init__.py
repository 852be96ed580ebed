"""Analysis scripts: the paper's tables and figures rebuilt from the Parquet results of ebomlc.results.

    python analysis/tables.py --results results/table1              # Tables I/II (markdown)
    python analysis/tables.py --results results/table1 --vs-paper   # ours, the paper's, the difference
    python analysis/figures.py --results results/table1 --out figures
"""
