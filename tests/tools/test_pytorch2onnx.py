"""tools/deployment/pytorch2onnx.py: DETR and Deformable DETR (plain, +refine, +two-stage) export
to ONNX and onnxruntime reproduces PyTorch's boxes (1e-2 px) and scores (1e-4) on a demo image;
unsupported configurations fail with a clear error. The models are the demo configs shrunk
(fewer layers and queries) with their initial weights, saved to and loaded from a checkpoint."""
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'deployment'))
import pytorch2onnx  # noqa: E402

DEMO = str(ROOT / 'configs' / 'demo' / 'deformable-detr-refine-twostage_r18-c32_demo-coco.py')
DETR = str(ROOT / 'configs' / 'detr' / 'detr_r50_8xb2-150e_coco.py')
SMALL_DEFORMABLE = ['model.encoder.num_layers=1', 'model.decoder.num_layers=2',
                    'model.num_queries=50', 'model.test_cfg.max_per_img=50']
VARIANTS = {
    'deformable-detr': (DEMO, SMALL_DEFORMABLE + ['model.with_box_refine=False',
                                                  'model.as_two_stage=False']),
    'deformable-detr-refine': (DEMO, SMALL_DEFORMABLE + ['model.with_box_refine=True',
                                                         'model.as_two_stage=False']),
    'deformable-detr-refine-twostage': (DEMO, SMALL_DEFORMABLE),
    'detr': (DETR, ['model.backbone.depth=18', 'model.neck.in_channels=[512]',
                    'model.encoder.num_layers=1', 'model.decoder.num_layers=2',
                    'model.num_queries=30', 'model.test_cfg.max_per_img=30',
                    'model.bbox_head.num_classes=5',
                    'test_dataloader.dataset.pipeline.1.scale=(256,256)']),
}


@pytest.fixture(scope='module')
def demo_image(tmp_path_factory) -> str:
    from crossformer_mm.datasets.demo_data import make_demo_data
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=1, num_val=1, size=256, seed=0, which=('coco', ))
    return str(next(iter(sorted((root / 'demo_coco' / 'val').iterdir()))))


def _options(items):
    parsed = pytorch2onnx.parse_args(['c', 'none', '--cfg-options', *items])
    return parsed.cfg_options


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_export_matches_onnxruntime(variant, demo_image, tmp_path, capsys):
    config, options = VARIANTS[variant]
    torch.manual_seed(0)
    model, _ = pytorch2onnx.build_detector(config, None, _options(options))
    model.init_weights()
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    out = tmp_path / 'model.onnx'
    rc = pytorch2onnx.main([config, str(checkpoint), '--out', str(out), '--image', demo_image,
                            '--verify', '--cfg-options', *options])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file()
    box, score = (float(x) for x in re.search(
        r'max \|box diff\| (\S+) px .* max \|score diff\| (\S+) ', text).groups())
    assert box <= 1e-2 and score <= 1e-4, text
    assert 'label mismatches 0' in text


def test_unsupported_configurations_fail_clearly(capsys):
    retinanet = str(ROOT / 'configs' / 'retinanet' / 'retinanet_r18-c32_fpn_24e_demo-coco.py')
    assert pytorch2onnx.main([retinanet, 'none']) == 2
    assert "model type 'RetinaNet' is not supported" in capsys.readouterr().err
    with pytest.raises(pytorch2onnx.ExportError, match='--opset 15 has no GridSample'):
        pytorch2onnx.export(torch.nn.Identity(), torch.zeros(1), [], 'x.onnx', opset=15)
    assert pytorch2onnx.main([DEMO, 'missing.pth']) == 2
