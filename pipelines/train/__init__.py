"""The training job: SAMA stage 0 / stage 1 on Ray Train with DeepSpeed (see ``job.py``)."""
