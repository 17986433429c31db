"""The filter job: cheap media checks, then a VLM judge, over an ingest manifest."""
