"""The console scripts of ``pyproject.toml``: each names its command and the module whose ``main``
it runs (``ConsoleScript``: a Ctrl-C during that module's imports is one line, not a traceback)."""

from mgdt_jax.core.commands import ConsoleScript

mgdt_record = ConsoleScript("mgdt-record", "data_pipelines.record")
mgdt_convert = ConsoleScript("mgdt-convert", "data_pipelines.convert")
mgdt_jat_record = ConsoleScript("mgdt-jat-record", "data_pipelines.jat.record")
mgdt_jat_import = ConsoleScript("mgdt-jat-import", "data_pipelines.jat.import_parquet")
mgdt_ad_histories = ConsoleScript("mgdt-ad-histories", "data_pipelines.ad_histories")
mgdt_index = ConsoleScript("mgdt-index", "data_pipelines.build_index")
mgdt_xland_benchmark = ConsoleScript("mgdt-xland-benchmark", "data_pipelines.xland_benchmark")
mgdt_train = ConsoleScript("mgdt-train", "mgdt_jax.cli.train")
mgdt_eval = ConsoleScript("mgdt-eval", "mgdt_jax.cli.evaluate")
mgdt_ad_eval = ConsoleScript("mgdt-ad-eval", "mgdt_jax.cli.ad_eval")
mgdt_ada_eval = ConsoleScript("mgdt-ada-eval", "mgdt_jax.cli.ada_eval")
mgdt_jat_eval = ConsoleScript("mgdt-jat-eval", "mgdt_jax.cli.jat_evaluate")
mgdt_import_checkpoint = ConsoleScript("mgdt-import-checkpoint", "mgdt_jax.cli.import_checkpoint")
mgdt_demo = ConsoleScript("mgdt-demo", "mgdt_jax.cli.demo")
