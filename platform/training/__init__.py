"""Training pieces with no Ray dependency: LR schedule, sharded EMA, data mixing and
bucket streams with a resumable position, metrics. The Ray Train job that wires them
to DeepSpeed lives in ``sama.pipelines.train``."""
