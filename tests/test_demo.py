"""Tests for the built-in demo scene generator (ulift_ns.demo)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ulift_ns import demo
from ulift_ns.demo import MaskNoiseConfig, generate_demo_scene, read_label_png

SMALL = dict(num_views=8, width=64, height=48)


def _gen(root: Path, name: str, **kw) -> Path:
    args = {**SMALL, **kw}
    return generate_demo_scene(root / name, **args)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    out = {"a": _gen(root, "a", seed=0)}
    elapsed = time.perf_counter() - t0
    out["a2"] = _gen(root, "a2", seed=0)
    out["b"] = _gen(root, "b", seed=1)
    out["clean"] = _gen(root, "clean", seed=2, noise=MaskNoiseConfig.clean())
    out["heavy"] = _gen(
        root,
        "heavy",
        seed=3,
        noise=MaskNoiseConfig(p_drop=0.3, p_merge=0.7, p_split=0.6, p_boundary=0.5, p_floor_split=0.5),
    )
    out["elapsed"] = elapsed
    return out


def _load(d: Path):
    tf = json.loads((d / "transforms.json").read_text())
    meta = json.loads((d / "demo_meta.json").read_text())
    stems = [Path(f["file_path"]).stem for f in tf["frames"]]
    imgs = [np.array(Image.open(d / "images" / f"{s}.png")) for s in stems]
    gts = [read_label_png(d / "gt_masks" / f"{s}.png") for s in stems]
    sams = [read_label_png(d / "sam_masks" / f"{s}.png") for s in stems]
    return tf, meta, stems, imgs, gts, sams


def _read_ply(path: Path):
    """Minimal independent binary-PLY reader (x,y,z float + red,green,blue uchar)."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    assert header[0] == "ply"
    assert "format binary_little_endian 1.0" in header
    n = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    props = [tuple(line.split()[1:3]) for line in header if line.startswith("property")]
    assert props == [
        ("float", "x"), ("float", "y"), ("float", "z"),
        ("uchar", "red"), ("uchar", "green"), ("uchar", "blue"),
    ]
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    arr = np.frombuffer(raw[end:], dtype=dt)
    assert arr.shape[0] == n
    return arr


# --------------------------------------------------------------------------- #
def test_small_generation_is_fast(scenes):
    assert scenes["elapsed"] < 3.0, f"8 views at 64x48 took {scenes['elapsed']:.2f}s"


def test_determinism_same_seed_identical_other_seed_different(scenes):
    a, a2, b = (_load(scenes[k]) for k in ("a", "a2", "b"))
    assert a[0] == a2[0]  # transforms.json
    for i in (3, 4, 5):  # images, gt, sam
        assert len(a[i]) == len(a2[i])
        for x, y in zip(a[i], a2[i]):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert (scenes["a"] / "sparse_pc.ply").read_bytes() == (scenes["a2"] / "sparse_pc.ply").read_bytes()
    assert a[1]["objects"] == a2[1]["objects"]
    assert a[1]["views"] == a2[1]["views"]
    # another seed: other layout, cameras and images
    assert a[1]["objects"] != b[1]["objects"]
    assert a[0]["frames"] != b[0]["frames"]
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a[3], b[3]))
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a[4], b[4]))


def test_layout_and_formats(scenes):
    d = scenes["a"]
    tf, meta, stems, imgs, gts, sams = _load(d)
    assert tf["camera_model"] == "OPENCV"
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        assert key in tf
    assert (tf["w"], tf["h"]) == (64, 48)
    assert all(tf[k] == 0 for k in ("k1", "k2", "p1", "p2"))
    assert tf["ply_file_path"] == "sparse_pc.ply" and (d / "sparse_pc.ply").is_file()
    assert len(tf["frames"]) == 8
    assert stems == [f"frame_{k:05d}" for k in range(8)]
    for fr in tf["frames"]:
        assert fr["file_path"].startswith("images/")
        m = np.asarray(fr["transform_matrix"])
        assert m.shape == (4, 4)
        np.testing.assert_allclose(m[3], [0, 0, 0, 1])
        r = m[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(r) == pytest.approx(1.0)
    for s in stems:
        for sub in ("gt_masks", "sam_masks"):
            with Image.open(d / sub / f"{s}.png") as im:
                assert im.mode == "I;16"
    for img, gt, sam in zip(imgs, gts, sams):
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert gt.shape == sam.shape == (48, 64)
        assert gt.dtype == np.uint16 and sam.dtype == np.uint16
    k = meta["num_objects"]
    assert 6 <= k <= 8
    assert [o["id"] for o in meta["objects"]] == list(range(1, k + 1))
    assert {o["shape"] for o in meta["objects"]} == {"box", "sphere", "cylinder"}
    assert meta["params"]["seed"] == 0 and meta["complete"] is True
    assert set(meta["noise"]) >= {"p_drop", "p_merge", "p_split", "p_boundary", "boundary_px"}
    all_gt = np.concatenate([g.ravel() for g in gts])
    assert all_gt.max() <= k and len(np.unique(all_gt)) >= 5
    # images are textured, not flat
    assert all(img.std() > 10 for img in imgs)


def test_label_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(17, 23)).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    demo.write_label_png(tmp_path / "x.png", arr)
    back = read_label_png(tmp_path / "x.png")
    assert back.dtype == np.uint16 and np.array_equal(back, arr)
    with Image.open(tmp_path / "x.png") as im:
        assert np.array_equal(np.array(im), arr)


# ---- scene geometry -------------------------------------------------------- #
def _sdf(o, p):
    c = np.asarray(o["center"])
    yaw = o["yaw"]
    rot = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    q = (p - c) @ rot
    if o["shape"] == "sphere":
        return np.linalg.norm(q, axis=1) - o["radius"]
    if o["shape"] == "box":
        dd = np.abs(q) - 0.5 * np.asarray(o["size"])
    else:
        dd = np.stack([np.hypot(q[:, 0], q[:, 1]) - o["radius"], np.abs(q[:, 2]) - 0.5 * o["height"]], 1)
    return np.linalg.norm(np.maximum(dd, 0), axis=1) + np.minimum(dd.max(axis=1), 0)


def _surface_samples(o, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    c = np.asarray(o["center"])
    yaw = o["yaw"]
    rot = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    if o["shape"] == "sphere":
        u = rng.normal(size=(n, 3))
        return c + o["radius"] * u / np.linalg.norm(u, axis=1, keepdims=True)
    if o["shape"] == "box":
        half = 0.5 * np.asarray(o["size"])
        q = rng.uniform(-1, 1, size=(n, 3)) * half
        ax = rng.integers(0, 3, size=n)
        q[np.arange(n), ax] = np.where(rng.random(n) < 0.5, -1, 1) * half[ax]
        return c + q @ rot.T
    r, h = o["radius"], o["height"]
    phi = rng.uniform(0, 2 * np.pi, n)
    rad = np.where(rng.random(n) < 0.7, r, r * np.sqrt(rng.random(n)))
    z = np.where(rad >= r, rng.uniform(-h / 2, h / 2, n), np.where(rng.random(n) < 0.5, -h / 2, h / 2))
    return c + np.stack([rad * np.cos(phi), rad * np.sin(phi), z], 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_scene_has_touching_small_and_shared_material_objects(seed):
    scene = demo.build_scene(seed)
    objs = [o.to_dict() for o in scene.objects]
    assert 6 <= len(objs) <= 8
    # objects rest on (or above) the ground
    for o in objs:
        assert _surface_samples(o)[:, 2].min() >= -1e-4
    # some share colour AND texture
    looks = [(tuple(o["material"]["color"]), o["material"]["texture"]) for o in objs]
    assert len(set(looks)) < len(looks)
    # some are small
    def extent(o):
        if o["shape"] == "box":
            return max(o["size"])
        return 2 * o["radius"] if o["shape"] == "sphere" else max(2 * o["radius"], o["height"])
    assert any(o["small"] and extent(o) < 0.25 for o in objs)
    # declared touching pairs touch without interpenetrating, others keep a gap
    touching = {(o["id"], t) for o in objs for t in o["touching"]}
    assert len(touching) >= 4  # at least two symmetric pairs
    for a in objs:
        for b in objs:
            if a["id"] == b["id"]:
                continue
            dmin = _sdf(a, _surface_samples(b, seed=b["id"])).min()
            assert dmin >= -2e-4, (a["name"], b["name"], dmin)
            if (a["id"], b["id"]) in touching:
                assert dmin <= 2e-3, (a["name"], b["name"], dmin)
            else:
                assert dmin >= 0.05, (a["name"], b["name"], dmin)


# ---- cameras --------------------------------------------------------------- #
def _project(tf, k, pts):
    """Project world points with the written OpenGL c2w + pinhole intrinsics -> (u, v, depth)."""
    c2w = np.asarray(tf["frames"][k]["transform_matrix"])
    w2c = np.linalg.inv(c2w)
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    z = -pc[:, 2]  # in front of an OpenGL camera means camera-frame z < 0
    u = tf["fl_x"] * pc[:, 0] / z + tf["cx"]
    v = -tf["fl_y"] * pc[:, 1] / z + tf["cy"]
    return u, v, z


def test_camera_convention_matches_ray_caster(scenes):
    """Surface points found by the ray caster project back onto their own pixel centres."""
    d = scenes["a"]
    tf, meta, *_ = _load(d)
    scene = demo.build_scene(meta["params"]["seed"])
    intr = {k: tf[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")}
    for k in (0, 3, 6):
        c2w = np.asarray(tf["frames"][k]["transform_matrix"])
        o, dirs = demo.pixel_rays(c2w, intr)
        t, kind = demo.cast_rays(scene, o, dirs)
        hit = np.nonzero(kind >= 0)[0]
        assert hit.size > 0.5 * kind.size
        pts = o[hit] + t[hit, None] * dirs[hit]
        u, v, z = _project(tf, k, pts)
        assert (z > 0).all()
        rows, cols = np.divmod(hit, tf["w"])
        np.testing.assert_allclose(u, cols + 0.5, atol=1e-6)
        np.testing.assert_allclose(v, rows + 0.5, atol=1e-6)
        # and the ground truth written for this view is what the caster sees
        gt = read_label_png(d / "gt_masks" / f"frame_{k:05d}.png").ravel()
        np.testing.assert_array_equal(gt, np.where(kind > 0, kind, 0))


def test_gt_ids_consistent_across_views(scenes):
    """Each object's 3D centre projects onto its own gt id (unless something occludes it)."""
    tf, meta, stems, imgs, gts, sams = _load(scenes["a"])
    ids = {o["id"] for o in meta["objects"]}
    seen_as_self = {i: 0 for i in ids}
    total = agree = 0
    for k in range(len(stems)):
        for o in meta["objects"]:
            u, v, z = _project(tf, k, np.asarray([o["center"]]))
            if z[0] <= 0 or not (0 <= u[0] < tf["w"] and 0 <= v[0] < tf["h"]):
                continue
            g = int(gts[k][int(v[0]), int(u[0])])
            if o["small"] and g == 0:
                continue  # at 64x48 a pixel-centre ray may just miss a tiny object
            assert g in ids, (k, o["name"], g)  # the ray through an object centre hits an object
            total += 1
            agree += g == o["id"]
            seen_as_self[o["id"]] += g == o["id"]
    assert total >= 30
    assert agree >= 0.75 * total, (agree, total)
    assert sum(v >= 2 for v in seen_as_self.values()) >= len(ids) - 1, seen_as_self


def test_nerfstudio_dataparser_reads_scene(scenes):
    pytest.importorskip("nerfstudio")
    torch = pytest.importorskip("torch")
    pytest.importorskip("open3d")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    d = scenes["a"]
    tf, meta, *_ = _load(d)
    out = NerfstudioDataParserConfig(data=d, load_3D_points=True, eval_mode="all").setup().get_dataparser_outputs(
        "train"
    )
    assert len(out.image_filenames) == 8
    ply = _read_ply(d / "sparse_pc.ply")
    assert out.metadata["points3D_xyz"].shape == (len(ply), 3)
    rgb = np.stack([ply["red"], ply["green"], ply["blue"]], 1)
    np.testing.assert_array_equal(out.metadata["points3D_rgb"].numpy(), rgb)
    # nerfstudio's own rays pass through the points our ray caster hit
    scene = demo.build_scene(0)
    intr = {k: tf[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")}
    view = demo.render_view(scene, np.asarray(tf["frames"][2]["transform_matrix"]), intr, supersample=1)
    hit = view["kind"].ravel() >= 0
    T = out.dataparser_transform.numpy().astype(np.float64)
    p = (view["points"][hit] @ T[:3, :3].T + T[:3, 3]) * out.dataparser_scale
    rays = out.cameras.generate_rays(camera_indices=2)
    ro = rays.origins.reshape(-1, 3).double().numpy()[hit]
    rd = rays.directions.reshape(-1, 3).double().numpy()[hit]
    rel = p - ro
    along = np.einsum("ij,ij->i", rel, rd)
    assert (along > 0).all()
    perp = np.linalg.norm(rel - along[:, None] * rd, axis=1)
    assert perp.max() < 1e-4 * max(1.0, along.max())
    del torch


# ---- SAM-like masks -------------------------------------------------------- #
def _majority(sam, mask):
    vals, cnt = np.unique(sam[mask], return_counts=True)
    return int(vals[np.argmax(cnt)]), cnt.max() / mask.sum()


def test_clean_sam_masks_are_permuted_gt_plus_floor(scenes):
    tf, meta, stems, imgs, gts, sams = _load(scenes["clean"])
    assert all(sum(len(v) for k, v in vm["events"].items() if isinstance(v, list)) == 0 for vm in meta["views"])
    not_identity = sky_views = 0
    mappings = []
    scene = demo.build_scene(meta["params"]["seed"])
    intr = {k: tf[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")}
    kinds = []
    for fr in tf["frames"]:
        o, dirs = demo.pixel_rays(np.asarray(fr["transform_matrix"]), intr)
        kinds.append(demo.cast_rays(scene, o, dirs)[1].reshape(tf["h"], tf["w"]))
    for gt, sam, vm in zip(gts, sams, meta["views"]):
        obj = gt > 0
        pairs = set(zip(gt[obj].tolist(), sam[obj].tolist()))
        gt_ids = {g for g, _ in pairs}
        mapping = dict(pairs)
        assert len(mapping) == len(pairs), "an object got several sam ids"
        assert len(set(mapping.values())) == len(mapping), "two objects share a sam id"
        assert 0 not in mapping.values()
        # background: exactly one extra (floor) id, plus unlabelled sky
        bg = set(np.unique(sam[~obj]).tolist())
        floor_ids = bg - {0}
        assert len(floor_ids) == 1 and not floor_ids & set(mapping.values())
        floor_id = next(iter(floor_ids))
        kind = kinds[len(mappings)]
        assert (sam[kind == 0] == floor_id).all() and (sam[kind == -1] == 0).all()
        sky_views += (kind == -1).any()
        # ids are exactly 1..M
        assert set(np.unique(sam).tolist()) - {0} == set(range(1, len(gt_ids) + 2))
        # meta agrees with the image
        seg = {s["sam_id"]: s for s in vm["segments"]}
        for g, s in mapping.items():
            assert seg[s]["gt_ids"] == [g] and seg[s]["kind"] == "object"
        assert seg[floor_ids.pop()]["kind"] == "floor"
        not_identity += any(g != s for g, s in mapping.items())
        mappings.append(mapping)
    assert not_identity >= len(gts) // 2
    assert sky_views >= 1
    # uncorrelated across views: an object seen in many views gets several different ids,
    # and views that see the same set of objects do not share one relabelling
    for g in set().union(*mappings):
        seen = [m[g] for m in mappings if g in m]
        if len(seen) >= 5:
            assert len(set(seen)) >= 2, (g, seen)
    by_visible = {}
    for m in mappings:
        by_visible.setdefault(frozenset(m), []).append(tuple(sorted(m.items())))
    same = sum(len(v) - len(set(v)) for v in by_visible.values())
    pairs = sum(len(v) - 1 for v in by_visible.values())
    assert pairs == 0 or same < pairs, by_visible


def test_default_noise_changes_masks(scenes):
    tf, meta, stems, imgs, gts, sams = _load(scenes["a"])
    broken = 0
    for gt, sam in zip(gts, sams):
        obj = gt > 0
        pairs = set(zip(gt[obj].tolist(), sam[obj].tolist()))
        broken += len({g for g, _ in pairs}) != len(pairs) or 0 in {s for _, s in pairs}
    assert broken >= len(gts) // 2
    assert sum(meta["noise_totals"].values()) > 0


def test_noise_events_happen_and_are_visible_in_masks(scenes):
    tf, meta, stems, imgs, gts, sams = _load(scenes["heavy"])
    verified = {"dropped": 0, "merged": 0, "split": 0, "floor_split": 0, "eroded": 0, "dilated": 0}
    px = meta["noise"]["boundary_px"]
    for gt, sam, vm in zip(gts, sams, meta["views"]):
        ev = vm["events"]
        # boundary noise moves labels by at most boundary_px: check object interiors
        inner = {
            int(i): ndimage.binary_erosion(gt == i, structure=np.ones((3, 3), bool), iterations=px)
            for i in np.unique(gt)
            if i
        }
        for i in ev["dropped"]:
            if inner[i].sum() >= 4:
                assert (sam[inner[i]] == 0).all(), ("drop", i)
                verified["dropped"] += 1
        for a, b in ev["merged"]:
            if inner[a].sum() >= 4 and inner[b].sum() >= 4:
                ids = np.unique(sam[inner[a] | inner[b]])
                assert len(ids) == 1 and ids[0] != 0, ("merge", a, b, ids)
                verified["merged"] += 1
        for i in ev["split"]:
            if inner[i].sum() >= 30:
                vals, cnt = np.unique(sam[inner[i]], return_counts=True)
                assert 0 not in vals, ("split", i)
                assert sum(c >= 0.1 * inner[i].sum() for c in cnt) == 2, ("split", i, vals, cnt)
                verified["split"] += 1
        for i in set(inner) - set(ev["dropped"]) - {x for pair in ev["merged"] for x in pair} - set(ev["split"]):
            if inner[i].sum() >= 4 and [i] not in ev["vanished"]:
                ids = np.unique(sam[inner[i]])
                assert len(ids) == 1 and ids[0] != 0, ("intact", i, ids)
        for key in ("eroded", "dilated"):
            for gids in ev[key]:
                segs = [s for s in vm["segments"] if s["gt_ids"] == gids]
                if len(segs) != 1 or segs[0]["kind"] != "object" or inner[gids[0]].sum() < 4:
                    continue
                mine, lab = gt == gids[0], sam == segs[0]["sam_id"]
                if key == "eroded":  # strictly inside, and the rim is lost
                    assert not (lab & ~mine).any() and (mine & ~lab).any(), (key, gids)
                else:  # grows over neighbouring labels
                    assert (lab & ~mine).any() and (lab[mine]).all(), (key, gids)
                verified[key] += 1
        if ev.get("floor_split"):
            floor_ids = [s["sam_id"] for s in vm["segments"] if s["kind"] == "floor"]
            assert len(floor_ids) == 2 and all((sam == f).any() for f in floor_ids)
            verified["floor_split"] += 1
        # boundary noise: labels near object boundaries disagree with gt sometimes
    assert all(v >= 1 for v in verified.values()), verified
    assert meta["noise_totals"]["eroded"] + meta["noise_totals"]["dilated"] > 0


def test_synthesize_sam_masks_unit():
    gt = np.zeros((30, 40), dtype=np.uint16)
    gt[5:15, 5:15] = 1
    gt[5:15, 15:25] = 2  # touches 1
    gt[20:28, 30:38] = 3  # isolated
    floor = gt == 0
    floor[:3] = False  # sky
    none = MaskNoiseConfig.clean()
    sam, info = demo.synthesize_sam_masks(gt, floor, none, np.random.default_rng(0))
    assert sorted(np.unique(sam).tolist()) == [0, 1, 2, 3, 4]
    assert (sam[:3] == 0).all()
    # merge everything mergeable: 1 and 2 are adjacent, 3 is not adjacent to anything
    cfg = MaskNoiseConfig(p_drop=0, min_area=0, p_merge=1, p_split=0, p_boundary=0, p_floor_split=0)
    sam, info = demo.synthesize_sam_masks(gt, floor, cfg, np.random.default_rng(1))
    assert info["events"]["merged"] == [[1, 2]]
    assert len(np.unique(sam[(gt == 1) | (gt == 2)])) == 1
    # split everything
    cfg = MaskNoiseConfig(p_drop=0, min_area=0, p_merge=0, p_split=1, min_split_area=10, p_boundary=0, p_floor_split=1)
    sam, info = demo.synthesize_sam_masks(gt, floor, cfg, np.random.default_rng(2))
    assert sorted(info["events"]["split"]) == [1, 2, 3]
    assert all(len(np.unique(sam[gt == i])) == 2 for i in (1, 2, 3))
    assert len([s for s in info["segments"] if s["kind"] == "floor"]) == 2
    assert sorted(np.unique(sam).tolist()) == list(range(0, 9))
    # drop everything, no floor
    cfg = MaskNoiseConfig(p_drop=1, floor_mask=False)
    sam, info = demo.synthesize_sam_masks(gt, floor, cfg, np.random.default_rng(3))
    assert sorted(info["events"]["dropped"]) == [1, 2, 3] and not sam.any()
    # tiny objects are dropped by min_area
    cfg = MaskNoiseConfig(p_drop=0, min_area=65, p_merge=0, p_split=0, p_boundary=0)
    sam, info = demo.synthesize_sam_masks(gt, floor, cfg, np.random.default_rng(4))
    assert sorted(info["events"]["dropped"]) == [3]
    # boundary noise: always on -> masks differ from gt at boundaries only
    cfg = MaskNoiseConfig(p_drop=0, min_area=0, p_merge=0, p_split=0, p_boundary=1, floor_mask=False)
    sam, info = demo.synthesize_sam_masks(gt, floor, cfg, np.random.default_rng(5))
    assert len(info["events"]["eroded"]) + len(info["events"]["dilated"]) == 3
    interior = np.zeros_like(floor)
    interior[7:13, 7:13] = True
    assert len(np.unique(sam[interior])) == 1 and sam[interior][0] != 0
    with pytest.raises(ValueError):
        MaskNoiseConfig(p_drop=1.5)


def test_boundary_noise_moves_labels_by_boundary_px():
    gt = np.zeros((24, 24), dtype=np.uint16)
    gt[8:16, 6:18] = 1
    floor = gt == 0
    st = np.ones((3, 3), bool)
    seen = set()
    for seed in range(40):
        cfg = MaskNoiseConfig(p_drop=0, min_area=0, p_merge=0, p_split=0, p_boundary=1, p_floor_split=0)
        sam, info = demo.synthesize_sam_masks(gt, floor, cfg, np.random.default_rng(seed))
        obj_id = next(s["sam_id"] for s in info["segments"] if s["gt_ids"] == [1])
        floor_id = next(s["sam_id"] for s in info["segments"] if s["kind"] == "floor")
        obj_op = "eroded" if [1] in info["events"]["eroded"] else "dilated"
        floor_op = "eroded" if [0] in info["events"]["eroded"] else "dilated"
        if obj_op == "eroded":
            want = ndimage.binary_erosion(gt == 1, structure=st, border_value=1)
        else:
            want = ndimage.binary_dilation(gt == 1, structure=st)
        assert np.array_equal(sam == obj_id, want), (seed, obj_op)
        if obj_op == "eroded" and floor_op == "eroded":  # a 2-px unlabelled gap between them
            eroded_floor = ndimage.binary_erosion(floor, structure=st, border_value=1)
            assert ((sam == 0) == ~(eroded_floor | want)).all()
            assert (sam[0] != 0).all()  # no unlabelled frame at the image border
        elif floor_op == "dilated":  # floor reaches into the object only where it was not repainted
            assert ((sam == floor_id) == (ndimage.binary_dilation(floor, structure=st) & ~want)).all()
        seen.add((obj_op, floor_op))
    assert len(seen) == 4


# ---- point cloud ----------------------------------------------------------- #
def test_sparse_point_cloud(scenes):
    d = scenes["a"]
    meta = json.loads((d / "demo_meta.json").read_text())
    ply = _read_ply(d / "sparse_pc.ply")
    assert 2000 <= len(ply) <= 8000 and len(ply) == meta["num_points"]
    all_xyz = np.stack([ply["x"], ply["y"], ply["z"]], 1).astype(np.float64)
    assert np.isfinite(all_xyz).all()
    scene = demo.build_scene(0)
    # far points sit on the sky shell (upper hemisphere), coloured like the sky in their direction
    radius = np.linalg.norm(all_xyz, axis=1)
    sky = radius > 2 * scene.ground_radius
    assert 0.1 < sky.mean() < 0.4
    assert np.allclose(radius[sky], 4.0 * scene.ground_radius, atol=1e-3) and all_xyz[sky, 2].min() >= 0
    sky_rgb = np.stack([ply["red"], ply["green"], ply["blue"]], 1)[sky] / 255.0
    lo, hi = np.minimum(scene.sky_horizon, scene.sky_zenith), np.maximum(scene.sky_horizon, scene.sky_zenith)
    assert ((sky_rgb >= lo - 1 / 255) & (sky_rgb <= hi + 1 / 255)).all()
    xyz = all_xyz[~sky]
    assert xyz[:, 2].min() > -0.03 and np.hypot(xyz[:, 0], xyz[:, 1]).max() < 4.05
    # the rest lie on surfaces: near the ground plane or near some object
    sdf = np.min([_sdf(o.to_dict(), xyz) for o in scene.objects] + [np.abs(xyz[:, 2])], axis=0)
    assert np.quantile(np.abs(sdf), 0.99) < 0.03
    on_objects = np.min([_sdf(o.to_dict(), xyz) for o in scene.objects], axis=0) < 0.02
    assert 0.3 < on_objects.mean() < 0.7
    rgb = np.stack([ply["red"], ply["green"], ply["blue"]], 1)
    assert len(np.unique(rgb, axis=0)) > 100
    plyfile = pytest.importorskip("plyfile")
    el = plyfile.PlyData.read(str(d / "sparse_pc.ply"))["vertex"]
    assert [p.name for p in el.properties] == ["x", "y", "z", "red", "green", "blue"]
    np.testing.assert_array_equal(np.asarray(el["red"]), ply["red"])


# ---- re-running / safety --------------------------------------------------- #
def test_refuses_foreign_directory(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a generated"):
        generate_demo_scene(user, **SMALL)
    with pytest.raises(FileExistsError):
        generate_demo_scene(user, overwrite=True, **SMALL)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "precious"
    # a file in the way
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError):
        generate_demo_scene(tmp_path / "afile", **SMALL)
    # an existing empty directory is fine
    (tmp_path / "empty").mkdir()
    assert (generate_demo_scene(tmp_path / "empty", num_views=2, width=32, height=24) / "transforms.json").is_file()


def test_idempotent_and_overwrite(tmp_path):
    d = tmp_path / "demo"
    kw = dict(num_views=3, width=32, height=24)
    assert generate_demo_scene(d, seed=4, **kw) == d
    img = d / "images" / "frame_00001.png"
    before = img.stat().st_mtime_ns
    (d / "my_notes.txt").write_text("keep me")
    t0 = time.perf_counter()
    assert generate_demo_scene(d, seed=4, **kw) == d
    assert time.perf_counter() - t0 < 0.5
    assert img.stat().st_mtime_ns == before  # not regenerated
    # different parameters: refused without overwrite, nothing touched
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_demo_scene(d, seed=5, **kw)
    with pytest.raises(FileExistsError):
        generate_demo_scene(d, seed=4, noise=MaskNoiseConfig.clean(), **kw)
    assert json.loads((d / "demo_meta.json").read_text())["params"]["seed"] == 4
    assert img.stat().st_mtime_ns == before
    # overwrite replaces the demo's own files and keeps the user's
    generate_demo_scene(d, seed=5, overwrite=True, num_views=2, width=32, height=24)
    meta = json.loads((d / "demo_meta.json").read_text())
    assert meta["params"]["seed"] == 5 and meta["params"]["num_views"] == 2
    assert (d / "my_notes.txt").read_text() == "keep me"
    assert not (d / "images" / "frame_00002.png").exists()  # stale file from the old demo removed
    assert len(json.loads((d / "transforms.json").read_text())["frames"]) == 2
    # a damaged demo (missing file) with the same parameters is repaired
    (d / "sam_masks" / "frame_00001.png").unlink()
    generate_demo_scene(d, seed=5, num_views=2, width=32, height=24)
    assert (d / "sam_masks" / "frame_00001.png").is_file()
    # an interrupted run (complete = False) is regenerated without overwrite
    meta["complete"] = False
    meta["params"]["seed"] = 99
    (d / "demo_meta.json").write_text(json.dumps(meta))
    generate_demo_scene(d, seed=6, num_views=2, width=32, height=24)
    assert json.loads((d / "demo_meta.json").read_text())["params"]["seed"] == 6
    assert (d / "my_notes.txt").read_text() == "keep me"


def test_cli_main(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--output", str(out), "--seed", "3", "--num-views", "2", "--width", "32", "--height", "24"]
    assert demo.main(argv) == 0
    assert (out / "transforms.json").is_file()
    assert demo.main(argv + ["--clean-masks"]) == 2  # other params, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert demo.main(argv + ["--clean-masks", "--overwrite"]) == 0
    assert json.loads((out / "demo_meta.json").read_text())["params"]["noise"]["p_split"] == 0.0


def test_scene_options_walls_extra_objects_and_colmap_layout(tmp_path):
    from ulift_ns.dataparser import UnifiedLiftDataParserConfig, detect_layout

    out = generate_demo_scene(tmp_path / "c", seed=2, num_views=4, width=24, height=18, extra_objects=7, walls=True, layout="colmap")
    meta = json.loads((out / "demo_meta.json").read_text())
    assert meta["num_objects"] >= 13 and meta["params"]["walls"] and meta["params"]["layout"] == "colmap"
    assert not (out / "transforms.json").exists() and detect_layout(out) == ("colmap", Path("sparse/0"))
    parsed = UnifiedLiftDataParserConfig(data=out, eval_mode="all").setup().get_dataparser_outputs("train")
    assert len(parsed.image_filenames) == 4 and int(parsed.cameras.width[0]) == 24
    assert parsed.metadata["points3D_xyz"].shape[0] == meta["num_points"]
    # Walls are background: never an id in the ground truth.
    ids = {int(i) for s in ("frame_00000", "frame_00001") for i in np.unique(read_label_png(out / "gt_masks" / f"{s}.png"))}
    assert ids <= set(range(meta["num_objects"] + 1))
    # The default demo's parameters are unchanged by the new options.
    plain = generate_demo_scene(tmp_path / "p", seed=2, num_views=2, width=16, height=12)
    assert set(json.loads((plain / "demo_meta.json").read_text())["params"]) == {"format_version", "seed", "num_views", "width", "height", "noise"}
