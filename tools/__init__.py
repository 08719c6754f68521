"""Developer tools, not installed with the product: the demo harness, the load-test client, the
Bento staging and the image build. Run them from the repository root (`python -m tools.demo`)."""
