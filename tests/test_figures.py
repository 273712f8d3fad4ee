"""Figure helpers: every experiment's line can be told apart."""

from ldct.figures import experiment_styles


def test_every_experiment_gets_its_own_line_style():
    names = ["featkpn_l1", "featkpn_ana", "redcnn_l1", "redcnn_ana", "edcnn_l1", "edcnn_ana", "sgdnet_l1",
             "sgdnet_ana", "dncnn_l1", "kpn_l1", "gaussian_l1", "mynet"]
    styles = experiment_styles(names)
    looks = {(tuple(s["color"]), s["ls"]) for s in styles.values()}
    assert len(looks) == len(names)  # matplotlib's default cycle would repeat featkpn_l1's colour
    assert styles["featkpn_l1"]["color"] == styles["featkpn_ana"]["color"]  # one colour per model
    assert styles["featkpn_l1"]["ls"] != styles["featkpn_ana"]["ls"]  # one dash pattern per loss
    assert len({tuple(styles[n]["color"]) for n in ("featkpn_l1", "redcnn_l1", "gaussian_l1", "mynet")}) == 4
