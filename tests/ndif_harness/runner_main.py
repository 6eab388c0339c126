"""`python runner_main.py -m ndif.services.ray.sandbox.runner ARGS`: ndif's runner, moe_interp hidden.

`ndif.services.ray.sandbox.host.spawn(python=...)` starts a runner as `[python, "-m",
module, *args]`; the harness passes a small script as `python` that runs this file, so the
runner is ndif's own module, started by ndif's own `spawn`, in a process that cannot import
`moe_interp` (this file's directory is `sys.path[0]`, hence the plain import below).

Two additions, both about the runner's weightless meta model (`nns.load_meta_model`):

- nnsight 0.8.1 cannot build a `TransformersModel` on the meta device under transformers
  >= 5.2x: `TransformersModel._loaded_preprocessors` (nnsight/modeling/transformers.py:354-359)
  reads the `_load_tokenizer` flag off `check_task(task)[1]["impl"]`, which transformers now
  gives as a dotted string, so no tokenizer source is passed and `pipeline()` raises
  "Impossible to guess which tokenizer to use". `_meta_build_fix` hands that method the
  class the string names (nothing else changes).
- ndif's runner logs a failed meta build and serves with every module id resolved to None;
  here a failed build ends the runner instead, so a test cannot pass without the meta model.
- nnsight's meta build (`TransformersModel._load_meta`) tries only the task's auto classes,
  where transformers' pipeline, which builds the server's real model, then tries the classes
  `config.architectures` names (transformers/pipelines/base.py, `load_model`). A multimodal
  checkpoint keyed "text-generation" (a local directory: `mi.load` sets that task; the tiny
  Qwen3-VL-MoE of tests/test_ndif_server_images.py, which cannot be keyed
  "image-text-to-text" here, since a Qwen-VL processor needs torchvision) is then real on the
  host and unbuildable in the runner. `_meta_architectures_fix` lets the meta build try those
  classes after the task's, as the real load does (nothing changes where the task's build).
"""

import importlib
import runpy
import sys

import no_moe_interp  # noqa: F401


def _meta_build_fix() -> None:
    import transformers.pipelines as pipelines
    from nnsight.modeling.transformers import TransformersModel

    if not isinstance(pipelines.check_task("text-generation")[1]["impl"], str):
        return  # a transformers whose pipeline table holds classes: nothing to fix
    real_check, real_loaded = pipelines.check_task, TransformersModel._loaded_preprocessors

    def check_task(task):
        name, targeted, options = real_check(task)
        module, _, attribute = targeted["impl"].rpartition(".")
        return name, {**targeted, "impl": getattr(importlib.import_module(module), attribute)}, options

    def loaded_preprocessors(self):
        pipelines.check_task = check_task
        try:
            return real_loaded(self)
        finally:
            pipelines.check_task = real_check

    TransformersModel._loaded_preprocessors = loaded_preprocessors


def _meta_architectures_fix() -> None:
    import transformers
    import transformers.pipelines as pipelines
    from nnsight.modeling.transformers import TransformersModel

    real_load = TransformersModel._load_meta

    class Concrete:  # a model class as the auto classes' `from_config`
        def __init__(self, cls) -> None:
            self.cls = cls

        def from_config(self, config, trust_remote_code=None, code_revision=None, **kwargs):
            return self.cls._from_config(config, **kwargs)  # the auto classes' options dropped, as the pipeline does

    def load_meta(self, repo_id, *args, **kwargs):
        config = transformers.AutoConfig.from_pretrained(repo_id, revision=self.revision)
        named = [getattr(transformers, name, None) for name in config.architectures or ()]
        extra = tuple(Concrete(cls) for cls in named if cls is not None)
        real_check = pipelines.check_task

        def check_task(task):
            name, targeted, options = real_check(task)
            return name, {**targeted, "pt": (*targeted["pt"], *extra)}, options

        pipelines.check_task = check_task  # `_load_meta` imports it as it starts
        try:
            return real_load(self, repo_id, *args, **kwargs)
        finally:
            pipelines.check_task = real_check

    TransformersModel._load_meta = load_meta


def _meta_model_required() -> None:
    from ndif.services.ray.sandbox import nns

    build = nns.load_meta_model

    def load_meta_model(model_key, trust_remote_code=False):
        try:
            build(model_key, trust_remote_code=trust_remote_code)
        except Exception as error:
            raise SystemExit(f"runner: the meta model of {model_key!r} did not build: {error!r}") from error

    nns.load_meta_model = load_meta_model


if __name__ == "__main__":
    if sys.argv[1:2] != ["-m"]:
        raise SystemExit(f"usage: runner_main.py -m MODULE ARGS (got {sys.argv[1:]})")
    _meta_build_fix()
    _meta_architectures_fix()
    _meta_model_required()
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
