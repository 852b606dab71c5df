//! Properties of the public types that callers rely on.

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn handles_can_be_shared_across_tasks_and_threads() {
    assert_send_sync::<coord_testkit::Etcd>();
    assert_send_sync::<coord_testkit::EtcdCluster>();
    assert_send_sync::<coord_testkit::FaultProxy>();
    assert_send_sync::<coord_testkit::TestCerts>();
    assert_send_sync::<coord_testkit::Error>();
}
