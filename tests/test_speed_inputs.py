"""bench.speed's photographs: grey for grey bundles, RGB for the photo zoo, and mosaics of any size from them."""

from __future__ import annotations

import numpy as np

from bench.speed import grey_photos, mosaic, sample_photos


def test_sample_photos_are_items_of_the_bundles_channel_count():
    grey, rgb = grey_photos(), sample_photos(3)
    assert list(grey) == list(rgb)
    for name in grey:
        g, c = grey[name], rgb[name]
        assert g.dtype == c.dtype == np.uint8 and g.shape[:2] == (1, 1) and c.shape[:2] == (1, 3)
        assert g.shape[2:] == c.shape[2:]
    assert not np.array_equal(rgb["astronaut"][0, 0], rgb["astronaut"][0, 2])  # colour kept
    assert np.array_equal(rgb["camera"][0, 0], rgb["camera"][0, 1])  # a grey one: three equal channels
    assert np.array_equal(grey["camera"][0, 0], rgb["camera"][0, 0])


def test_a_mosaic_tiles_the_photos_in_order_for_any_channel_count():
    for photos in (grey_photos(), sample_photos(3)):
        m = mosaic(photos, 1000, 1300)
        c = next(iter(photos.values())).shape[1]
        assert m.shape == (1, c, 1000, 1300) and m.flags.c_contiguous
        first, second = list(photos.values())[:2]
        assert np.array_equal(m[0, :, :512, :512], first[0, :, :512, :512])  # camera, 512x512
        assert np.array_equal(m[0, :, :512, 512:1024], second[0, :, :512, :512])  # then moon


def test_the_reference_workload_reports_a_plausible_speed():
    from bench.speed import reference_gflops

    small, big = reference_gflops(64, 3), reference_gflops(256, 3)
    assert 0.01 < small < 1e4 and 0.01 < big < 1e4  # GFLOP/s of one core, not seconds or FLOP/s
