
import mmpipe


def test_embed_folder_writes_shards(image_dir, tiny_model_spec, tmp_path):
    result = mmpipe.embed(str(image_dir), str(tmp_path / "out"), model=tiny_model_spec,
                          batch_size=3, progress=False)
    assert (result.ok, result.errors) == (8, 0)
    table = mmpipe.read_output(tmp_path / "out")
    assert sorted(table["id"].to_pylist()) == sorted(
        ["img1.jpg", "img2.png", "img4.png", "img5.jpg", "img7.jpg",
         "sub/img0.png", "sub/img3.jpg", "sub/img6.png"])
    captions = dict(zip(table["id"].to_pylist(), table["text"].to_pylist()))
    assert captions["img2.png"] == "a picture number 2" and captions["img1.jpg"] is None
