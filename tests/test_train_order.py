from pcdms_aug.training.data import MicroBatchSampler


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_two_ranks_see_the_global_batch_of_one_process_with_accumulation():
    one = _take(MicroBatchSampler(10, 2, 2, 0, 1, seed=3), 6)  # 3 steps x 2 micro-batches
    r0 = _take(MicroBatchSampler(10, 2, 1, 0, 2, seed=3), 3)
    r1 = _take(MicroBatchSampler(10, 2, 1, 1, 2, seed=3), 3)
    assert one[0::2] == r0 and one[1::2] == r1


def test_epochs_wrap_without_short_batches_and_cover_everything():
    s = MicroBatchSampler(7, 3, 1, 0, 1, seed=0)
    batches = _take(s, 7)  # 21 samples = 3 epochs of 7
    assert all(len(b) == 3 for b in batches)
    flat = [i for b in batches for i in b]
    for e in range(3):
        assert sorted(flat[7 * e:7 * e + 7]) == list(range(7))
    assert flat[:7] != flat[7:14]  # reshuffled per epoch


def test_resume_continues_the_same_order():
    full = _take(MicroBatchSampler(11, 2, 1, 0, 1, seed=5), 9)
    resumed = _take(MicroBatchSampler(11, 2, 1, 0, 1, seed=5, start_step=4), 5)
    assert full[4:] == resumed
