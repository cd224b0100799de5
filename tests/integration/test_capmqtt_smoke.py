from tests.support.waiting import wait_until


def test_capmqtt_sees_the_session_broker(capmqtt):
    capmqtt.publish("cluster/smoke/message", b"hello", qos=1)
    wait_until(lambda: any(m.topic == "cluster/smoke/message" for m in capmqtt.messages))
