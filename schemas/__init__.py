"""Ships the pipeline JSON Schema inside the wheel as `lamina_batch.schemas` (read with importlib.resources)."""
