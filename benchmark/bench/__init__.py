"""``python -m benchmark bench``: throughput measured side by side in one run, a module per
subcommand.

Speed goals are ratios of timings taken in the same process on the same device, so they
hold on any machine; nothing here is a pass/fail test.
"""
