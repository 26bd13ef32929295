"""Measuring the product on public data sets through its own code path: retrieval, answers, summaries.

datasets.py reads the data sets and samples and splits them, metrics.py holds the pure metrics, and
retrieval.py, qa.py and summary.py run one eval each through the product's services.
"""
