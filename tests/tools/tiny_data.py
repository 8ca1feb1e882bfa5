"""Test-only: a tiny copy of the demo COCO data for the tool tests' training runs."""
from pathlib import Path

from crossformer_mm.datasets.demo_data import make_demo_data


def tiny_demo_coco(root: Path) -> str:
    """Writes 8 train / 4 val demo images of 128x128 under ``root/data`` and returns the config
    lines that point a demo detection config's loaders and evaluators at them."""
    make_demo_data(str(root / 'data'), num_train=8, num_val=4, size=128, seed=0, which=('coco', ))
    return (f"data_root = '{root}/data/demo_coco/'\n"
            "train_dataloader = dict(dataset=dict(data_root=data_root))\n"
            "val_dataloader = dict(dataset=dict(data_root=data_root))\n"
            "test_dataloader = val_dataloader\n"
            "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')\n"
            "test_evaluator = val_evaluator\n")
