"""SpineCast: predict 12-month satisfaction after each spine treatment from the chart."""

__version__ = "0.1.0"
