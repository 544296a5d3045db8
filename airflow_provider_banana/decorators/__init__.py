"""TaskFlow decorators: ``@task.banana`` and ``@task.banana_batch`` (see :mod:`.banana`)."""
