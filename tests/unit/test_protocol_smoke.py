from cluster_protocol import Envelope, decode_envelope, encode_envelope


def test_envelope_round_trip():
    env = Envelope(type="metrics", node="pi-01", ts=1.5, seq=3, payload={"cpu_percent": 1.0})
    assert decode_envelope(encode_envelope(env), "pi-01", "metrics", 0.0) == env
