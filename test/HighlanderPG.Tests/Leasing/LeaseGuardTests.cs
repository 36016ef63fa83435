using HighlanderPG.Leasing;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Leasing;

/// <summary>The lease guard keeps the stop and escalation points on its own thread, off the thread pool.</summary>
public sealed class LeaseGuardTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task The_stop_point_fires_on_the_guards_own_thread_and_not_before_it_is_due()
    {
        var time = new FakeTimeProvider();
        var start = time.GetUtcNow();
        var fired = new TaskCompletionSource<(DateTimeOffset At, bool PoolThread, string? Thread)>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var guard = new LeaseGuard(time, "n1", () => fired.TrySetResult((time.GetUtcNow(), Thread.CurrentThread.IsThreadPoolThread, Thread.CurrentThread.Name)));

        guard.SetStopPoint(time.GetTimestamp() + Ticks(time, TimeSpan.FromSeconds(5)));
        time.Advance(TimeSpan.FromSeconds(4));
        guard.Poke();
        time.Advance(TimeSpan.FromSeconds(1));
        guard.Poke();

        var (at, poolThread, thread) = await fired.Task.WaitAsync(Limit);
        Assert.Equal(start + TimeSpan.FromSeconds(5), at);
        Assert.False(poolThread);
        Assert.Equal("HighlanderPG lease guard (n1)", thread);
    }

    [Fact]
    public async Task At_the_escalation_point_a_child_still_running_is_escalated_once_and_a_stopped_one_is_not()
    {
        var time = new FakeTimeProvider();
        using var guard = new LeaseGuard(time, "n1", () => { });
        var stoppedLease = new Lease(1, 1, time.GetUtcNow());
        var runningLease = new Lease(2, 1, time.GetUtcNow());
        var escalatedStopped = 0;
        var escalated = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var stoppedWatch = guard.Start(stoppedLease, () => false, w => Interlocked.Increment(ref escalatedStopped));
        using var runningWatch = guard.Start(runningLease, () => true, w => escalated.TrySetResult(w.TryClaimEscalation() && !Thread.CurrentThread.IsThreadPoolThread));

        var escalateAt = time.GetTimestamp() + Ticks(time, TimeSpan.FromSeconds(2));
        stoppedLease.Lose("test", escalateAt);
        runningLease.Lose("test", escalateAt);
        guard.Poke();
        time.Advance(TimeSpan.FromSeconds(2));
        guard.Poke();

        Assert.True(await escalated.Task.WaitAsync(Limit)); // claimed by the guard, on its own thread
        Assert.False(runningWatch.TryClaimEscalation()); // the runner coming later does not escalate again
        Assert.Equal(0, Volatile.Read(ref escalatedStopped)); // looked at first, in the same pass, and left alone
    }

    [Fact]
    public async Task A_child_watched_when_the_guard_is_disposed_is_still_guarded()
    {
        var time = new FakeTimeProvider();
        var guard = new LeaseGuard(time, "n1", () => { });
        var lease = new Lease(1, 1, time.GetUtcNow());
        var escalated = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watch = guard.Start(lease, () => true, _ => escalated.TrySetResult());

        guard.Dispose(); // the session ended: its lock went with it, but the child may still run
        lease.Lose("session lost", time.GetTimestamp());
        guard.Poke();

        await escalated.Task.WaitAsync(Limit);
    }

    [Fact]
    public async Task A_child_watched_under_a_lease_already_lost_is_escalated_without_another_poke()
    {
        var time = new FakeTimeProvider();
        using var guard = new LeaseGuard(time, "n1", () => { });
        using var idle = guard.Start(new Lease(1, 1, time.GetUtcNow()), () => true, _ => { }); // the guard's thread runs, idle
        var lease = new Lease(2, 1, time.GetUtcNow());
        lease.Lose("session lost", time.GetTimestamp()); // lost (and poked) before the runner got to watch its child

        var escalated = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watch = guard.Start(lease, () => true, _ => escalated.TrySetResult());

        await escalated.Task.WaitAsync(Limit);
    }

    [Fact]
    public async Task A_thousand_children_starting_and_stopping_do_not_wake_the_guard()
    {
        var time = new FakeTimeProvider();
        using var guard = new LeaseGuard(time, "n1", () => { });
        var first = guard.Start(new Lease(0, 1, time.GetUtcNow()), () => true, _ => { });
        await WaitUntilAsync(() => guard.Passes == 1); // the thread started, looked once, and waits
        var watches = Enumerable.Range(1, 1000).Select(k => guard.Start(new Lease(k, 1, time.GetUtcNow()), () => true, _ => { })).ToList();
        foreach (var watch in watches)
        {
            watch.Dispose();
        }

        // Each start or stop used to wake the guard to look at every watch: a million looks under the lock the runners take.
        Assert.Equal(1, guard.Passes);

        var lost = new Lease(5000, 1, time.GetUtcNow());
        var escalated = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watched = guard.Start(lost, () => true, _ => escalated.TrySetResult());
        lost.Lose("test", time.GetTimestamp());
        guard.Poke(); // a loss still wakes it
        await escalated.Task.WaitAsync(Limit);
        first.Dispose();
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var until = DateTime.UtcNow + Limit;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, "condition not met in time");
            await Task.Delay(5);
        }
    }

    [Fact]
    public async Task Unwatched_completes_once_no_child_of_the_given_leases_is_watched_any_more()
    {
        var time = new FakeTimeProvider();
        using var guard = new LeaseGuard(time, "n1", () => { });
        var first = new Lease(1, 1, time.GetUtcNow());
        var second = new Lease(2, 1, time.GetUtcNow());
        var other = new Lease(3, 1, time.GetUtcNow());
        var firstWatch = guard.Start(first, () => true, _ => { });
        var secondWatch = guard.Start(second, () => true, _ => { });
        using var otherWatch = guard.Start(other, () => true, _ => { });

        Assert.True(guard.WhenUnwatchedAsync([], CancellationToken.None).IsCompletedSuccessfully); // nothing to wait for
        var gone = guard.WhenUnwatchedAsync([first, second], CancellationToken.None);
        firstWatch.Dispose();
        Assert.False(gone.IsCompleted); // the second child may still run
        secondWatch.Dispose();
        await gone.WaitAsync(Limit); // a watch of another lease does not hold it up
    }

    [Fact]
    public async Task Unwatched_is_cancelled_while_a_child_is_still_watched()
    {
        var time = new FakeTimeProvider();
        using var guard = new LeaseGuard(time, "n1", () => { });
        var lease = new Lease(1, 1, time.GetUtcNow());
        using var watch = guard.Start(lease, () => true, _ => { });
        using var cap = new CancellationTokenSource(TimeSpan.FromSeconds(5), time);

        var gone = guard.WhenUnwatchedAsync([lease], cap.Token);
        time.Advance(TimeSpan.FromSeconds(5));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => gone.WaitAsync(Limit));
    }

    private static long Ticks(TimeProvider time, TimeSpan span) => LeaseTimings.ToTimestampDelta(span, time);
}
