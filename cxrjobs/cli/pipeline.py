"""`cxrjobs pipeline paper`: the paper's experiment, every stage a job on one backend."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrjobs.cli.common import out, print_json

app = typer.Typer(no_args_is_help=True, help="Multi-stage pipelines: paper.")


@app.command("paper")
def paper(nih: Optional[str] = typer.Option(None, help="NIH ChestX-ray14 folder (default: phantom data)"),
          covid: Optional[str] = typer.Option(None, help="COVID-19 folder, metadata.csv layout (default: phantom data)"),
          test2: Optional[str] = typer.Option(None, help="external test set: covid layout or ROOT/<class>/ images"),
          imagenet: Optional[str] = typer.Option(None, help="ResNeXt-50 ImageNet weights (file, s3://, store key): adds that baseline"),
          replicas: int = typer.Option(2, min=1, help="processes / pods per job (DDP for training)"),
          backend: str = typer.Option("local", help="where the jobs run"),
          name: str = typer.Option("paper", help="pipeline name: runs are NAME-<stage>; rerun it to resume"),
          out_dir: Path = typer.Option(Path("pipeline-out"), "--out", help="where phantom data is written"),
          size: Optional[int] = typer.Option(None, min=16, help="image side (default 64 on phantom data, 224 on real data)"),
          nih_epochs: Optional[int] = typer.Option(None, min=1, help="NIH pre-training epochs (default 3 phantom / 10 real)"),
          epochs: Optional[int] = typer.Option(None, min=1, help="COVID training epochs (default 4 phantom / 20 real)"),
          threads: Optional[int] = typer.Option(None, min=1, help="torch threads per replica"),
          quiet: bool = typer.Option(False, "--quiet", help="stage lines only, no job logs"),
          as_json: bool = typer.Option(False, "--json", help="print the pipeline summary as JSON")):
    """Preprocess -> NIH pre-training (DDP, smallcnn and resnext50) -> transfer methods 1 and 2 ->
    ResNeXt-50 baselines -> test 1 and test 2 scores. A rerun skips finished stages and resumes an
    interrupted one. Without --nih/--covid it generates phantom data at small sizes and says so.

    Example: cxrjobs pipeline paper --nih ../shared/data/nih-sample --covid ../shared/data/covid-xray --replicas 2
    """
    from cxrjobs.pipeline import PaperConfig, run_pipeline, summary_lines

    cfg = PaperConfig(name=name, nih=nih, covid=covid, test2=test2, imagenet=imagenet, replicas=replicas,
                      backend=backend, out=out_dir, size=size, nih_epochs=nih_epochs, epochs=epochs,
                      threads=threads)
    say = (lambda m: None) if as_json else out.print
    stream = (lambda m: None) if (quiet or as_json) else (lambda m: print(m, flush=True))
    result = run_pipeline(cfg, say=say, stream=stream)
    if as_json:
        print_json(result.to_dict())
        return
    for line in summary_lines(result):
        out.print(line)
