"""Early config checks: clear errors for the mistakes users make most."""
import pytest
from mmengine.config import Config

import crossformer_mm  # noqa: F401
from crossformer_mm.utils.config import (ConfigError, check_checkpoint_path, check_data_roots,
                                         check_types, load_config)


def test_missing_config_suggests_close_names(tmp_path):
    (tmp_path / 'retinanet_demo.py').write_text('a = 1\n')
    with pytest.raises(FileNotFoundError, match='retinanet_demo.py'):
        load_config(str(tmp_path / 'retinanet_dmo.py'))


def test_unknown_type_names_registry_and_close_matches():
    cfg = Config(dict(default_scope='mmdet',
                      model=dict(type='RetinaNet', backbone=dict(type='CrossFomer'))))
    with pytest.raises(ConfigError) as err:
        check_types(cfg)
    text = str(err.value)
    assert "'CrossFomer'" in text and 'model.backbone' in text and 'mmdet' in text
    assert 'CrossFormer' in text.split('Close matches:')[1]


def test_known_types_pass_in_every_scope():
    check_types(Config(dict(default_scope='mmdet', model=dict(
        type='RetinaNet', backbone=dict(type='CrossFormer'), neck=dict(type='FPN'),
        bbox_head=dict(type='RetinaHead', loss_cls=dict(type='FocalLoss'),
                       anchor_generator=dict(type='AnchorGenerator'))),
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW')))))
    check_types(Config(dict(default_scope='mmseg', model=dict(
        type='EncoderDecoder', backbone=dict(type='CrossFormer'),
        decode_head=dict(type='UPerHead')))))


def test_missing_data_root_says_how_to_generate(tmp_path):
    cfg = Config(dict(train_dataloader=dict(dataset=dict(data_root=str(tmp_path / 'demo_coco')))))
    with pytest.raises(FileNotFoundError, match='make_demo_data.py'):
        check_data_roots(cfg)
    wrapped = Config(dict(val_dataloader=dict(dataset=dict(
        type='RepeatDataset', dataset=dict(data_root=str(tmp_path / 'coco'))))))
    with pytest.raises(FileNotFoundError, match='val_dataloader'):
        check_data_roots(wrapped)
    check_data_roots(Config(dict(train_dataloader=dict(dataset=dict(data_root=str(tmp_path))))))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        check_checkpoint_path(str(tmp_path / 'x.pth'))
    check_checkpoint_path(None)
    check_checkpoint_path('https://example.org/x.pth')


def test_mmcv_op_names_are_not_registry_types():
    check_types(Config(dict(default_scope='mmdet', model=dict(
        type='MaskRCNN', roi_head=dict(bbox_roi_extractor=dict(
            type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', output_size=7))),
        test_cfg=dict(rpn=dict(nms=dict(type='nms')))))))
