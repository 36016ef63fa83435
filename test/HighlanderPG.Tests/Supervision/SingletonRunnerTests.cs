using HighlanderPG.Leasing;
using HighlanderPG.Supervision;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Supervision;

/// <summary>
/// The runner's promises, driven through a fake lock session on a fake clock (no PostgreSQL): the child is gone before
/// its lock is released, a lost lease is never released, a child that cannot be stopped is escalated and keeps the lock
/// until it has really ended, and what the escalation handler is told.
/// </summary>
public sealed class SingletonRunnerTests : IAsyncDisposable
{
    private const long Key = 77;
    private readonly FakeTimeProvider _time = new();
    private readonly Journal _journal = new();
    private readonly ChildControl _control = new();
    private readonly List<EscalationContext> _escalations = [];
    private readonly List<SingletonStateChanged> _changes = [];
    private readonly FakeLockSession _session;
    private readonly CancellationTokenSource _stopping = new();
    private readonly HighlanderOptions _options;
    private readonly SingletonRunner _runner;
    private Task _run = Task.CompletedTask;

    public SingletonRunnerTests()
    {
        _session = new FakeLockSession(_time, _journal);
        _options = new HighlanderOptions
        {
            NodeId = "n1",
            OnEscalation = context =>
            {
                lock (_escalations)
                {
                    _escalations.Add(context);
                }

                _journal.Add("escalated");
                return ValueTask.CompletedTask;
            },
        };
        _runner = CreateRunner(sp => new JournalChild(_journal, _control));
    }

    private SingletonRunner CreateRunner(Func<IServiceProvider, IHostedService> factory)
    {
        var services = new ServiceCollection().AddScoped<LeadershipAccessor>().BuildServiceProvider();
        var registration = new SingletonRegistration("job", typeof(IHostedService), factory, null);
        return new SingletonRunner(registration, new ClusterSingletonOptions(), Key, _options, LeaseTimings.From(_options), _session, services, _time, NullLogger.Instance, Publish, () => { });
    }

    private void Publish(SingletonStateChanged change)
    {
        lock (_changes)
        {
            _changes.Add(change);
        }
    }

    private List<SingletonStateChanged> Changes
    {
        get
        {
            lock (_changes)
            {
                return [.. _changes];
            }
        }
    }

    private async Task<Lease> LeadAsync(SingletonRunner runner)
    {
        _run = runner.RunAsync(_stopping.Token);
        var lease = await _session.GrantNextAsync();
        return lease;
    }

    private long In(TimeSpan span) => _time.GetTimestamp() + LeaseTimings.ToTimestampDelta(span, _time);

    [Fact]
    public async Task On_step_down_the_child_has_stopped_before_the_lock_is_released()
    {
        await LeadAsync(_runner);
        await _journal.WaitForAsync("child started");

        var steppedDown = _runner.StepDownAsync();
        await _journal.WaitForAsync("child told to stop");
        Assert.Equal(0, Volatile.Read(ref _session.Releases)); // the child is still stopping: the lock stays held
        Assert.False(steppedDown.IsCompleted);

        _control.AllowStop.SetResult();
        await steppedDown.WaitAsync(Journal.Limit);
        Assert.Equal(["child started", "child told to stop", "child ended", "release"], _journal.Entries);
        Assert.Empty(_escalations);
    }

    [Fact]
    public async Task On_lease_loss_the_child_is_stopped_and_no_release_is_sent()
    {
        _control.AllowStop.SetResult();
        var lease = await LeadAsync(_runner);
        await _journal.WaitForAsync("child started");

        lease.Lose("cut off", In(TimeSpan.FromSeconds(4)), In(TimeSpan.FromSeconds(5)));
        await _journal.WaitForAsync("child ended");
        await _session.WaitForAcquireAsync(); // contending again

        Assert.Equal(0, Volatile.Read(ref _session.Releases));
        Assert.Equal(["child started", "child told to stop", "child ended"], _journal.Entries);
        Assert.Contains(Changes, c => c.Current == SingletonState.Stopping && c.Reason == "lease lost: cut off");
        Assert.Empty(_escalations);
    }

    [Fact]
    public async Task A_lease_lost_before_the_child_begins_never_starts_it_and_is_never_released()
    {
        // The child is built (its scope, its constructor) after the grant and before it is watched: the lease is lost there,
        // as when the session is given up while the runner waits for a thread (the session then finds no watch and closes).
        using var built = new ManualResetEventSlim();
        using var proceed = new ManualResetEventSlim();
        var runner = CreateRunner(sp =>
        {
            built.Set();
            proceed.Wait(Journal.Limit);
            return new LifecycleChild(_journal); // records its StartingAsync whatever its token says
        });
        var lease = await LeadAsync(runner);
        Assert.True(built.Wait(Journal.Limit));
        lease.Lose("statement failed", In(TimeSpan.FromSeconds(4)));
        proceed.Set();

        await _session.WaitForAcquireAsync(); // contending again
        Assert.Empty(_journal.Entries); // never started, nothing released
        Assert.Equal(0, Volatile.Read(ref _session.Releases));
        Assert.Empty(_escalations);
        Assert.Contains(Changes, c => c.Reason?.Contains("lease lost before the child started: statement failed", StringComparison.Ordinal) == true);
    }

    [Fact]
    public async Task A_child_that_ignores_cancellation_at_step_down_is_escalated_and_its_lock_released_only_once_it_ended()
    {
        _control.IgnoreCancellation = true;
        _session.ServerMayFreeTimestamp = In(TimeSpan.FromSeconds(15)); // the session keeps heartbeating
        await LeadAsync(_runner);
        await _journal.WaitForAsync("child started");

        var steppedDown = _runner.StepDownAsync();
        await _journal.WaitForAsync("child told to stop");
        Assert.Empty(_escalations);

        // The stop timeout runs out (timers fire up to a millisecond late, never early).
        _time.Advance(_options.StopTimeout + TimeSpan.FromMilliseconds(1));
        await _journal.WaitForAsync("escalated");
        Assert.Equal(0, Volatile.Read(ref _session.Releases)); // the handler returned, the child still runs: lock kept
        Assert.False(steppedDown.IsCompleted);

        _control.Kill();
        await steppedDown.WaitAsync(Journal.Limit);
        Assert.Equal(["child started", "child told to stop", "escalated", "child ended", "release"], _journal.Entries);

        var context = Assert.Single(_escalations);
        Assert.Equal("job", context.Singleton);
        Assert.Equal("n1", context.NodeId);
        Assert.Contains("did not stop within", context.Reason, StringComparison.Ordinal);

        // Still held: what the server would wait if the node went silent now (last acknowledged send + lease − now).
        Assert.Equal(TimeSpan.FromSeconds(15) - _options.StopTimeout - TimeSpan.FromMilliseconds(1), context.RemainingLease);
    }

    [Fact]
    public async Task A_child_that_ignores_cancellation_after_its_lease_was_lost_is_escalated_at_its_escalation_point_and_never_released()
    {
        _control.IgnoreCancellation = true;
        var lease = await LeadAsync(_runner);
        await _journal.WaitForAsync("child started");

        lease.Lose("the lease is about to expire", In(TimeSpan.FromSeconds(2)), In(TimeSpan.FromSeconds(3)));
        _session.Guard.Poke();
        await _journal.WaitForAsync("child told to stop");
        Assert.Empty(_escalations);

        _time.Advance(TimeSpan.FromSeconds(2));
        _session.Guard.Poke(); // the guard's own thread compares timestamps: tell it the clock moved
        await _journal.WaitForAsync("escalated");

        var context = Assert.Single(_escalations);
        Assert.Contains("did not stop", context.Reason, StringComparison.Ordinal);
        Assert.Equal(TimeSpan.FromSeconds(1), context.RemainingLease); // server may free it 3 s after the loss; 2 s passed

        // The runner's own stop timer fires up to a millisecond after the escalation point; it does not escalate again.
        _time.Advance(TimeSpan.FromMilliseconds(1));
        await _session.WaitForAcquireAsync(); // contends again; the lost lock is never "released" by this node
        Assert.Equal(0, Volatile.Read(ref _session.Releases));
        _control.Kill();
        await _journal.WaitForAsync("child ended");
    }

    [Fact]
    public void The_remaining_lease_is_the_time_until_the_server_may_free_the_lock_and_never_negative()
    {
        var held = new Lease(Key, 1, _time.GetUtcNow());
        _session.ServerMayFreeTimestamp = In(TimeSpan.FromSeconds(9));
        Assert.Equal(TimeSpan.FromSeconds(9), _runner.RemainingLease(held));

        var byDeadline = new Lease(Key, 1, _time.GetUtcNow());
        byDeadline.Lose("the lease is about to expire", In(TimeSpan.FromSeconds(1)), In(TimeSpan.FromSeconds(2)));
        Assert.Equal(TimeSpan.FromSeconds(2), _runner.RemainingLease(byDeadline));
        _time.Advance(TimeSpan.FromSeconds(7)); // e.g. a pause: the point passed
        Assert.Equal(TimeSpan.Zero, _runner.RemainingLease(byDeadline));

        var broken = new Lease(Key, 1, _time.GetUtcNow());
        broken.Lose("connection reset", In(TimeSpan.FromSeconds(5))); // the server may already have freed it
        Assert.Equal(TimeSpan.Zero, _runner.RemainingLease(broken));

        _session.ServerMayFreeTimestamp = long.MinValue; // no session
        Assert.Equal(TimeSpan.Zero, _runner.RemainingLease(held));
    }

    [Fact]
    public async Task A_lifecycle_child_gets_every_lifecycle_call_in_order()
    {
        var runner = CreateRunner(sp => new LifecycleChild(_journal));
        await LeadAsync(runner);
        await _journal.WaitForAsync("started");

        await runner.StepDownAsync().WaitAsync(Journal.Limit);
        Assert.Equal(["starting", "start", "started", "stopping", "stop", "stopped", "release"], _journal.Entries);
    }

    [Fact]
    public void Each_failed_connection_attempt_while_disconnected_is_published()
    {
        _session.IsConnected = false;
        _session.RaiseConnectionChanged("cannot connect: connection refused");
        _session.RaiseConnectionChanged("cannot connect: connection refused");

        var changes = Changes;
        Assert.Equal(2, changes.Count);
        Assert.All(changes, c =>
        {
            Assert.Equal(SingletonState.Disconnected, c.Previous);
            Assert.Equal(SingletonState.Disconnected, c.Current);
            Assert.Equal("cannot connect: connection refused", c.Reason);
        });
        Assert.Equal("cannot connect: connection refused", _runner.GetStatus().LastError);

        _session.RaiseConnectionChanged(null);
        _session.RaiseConnectionChanged("connection reset");
        Assert.Equal(
            [(SingletonState.Disconnected, SingletonState.Following), (SingletonState.Following, SingletonState.Disconnected)],
            Changes.Skip(2).Select(c => (c.Previous, c.Current)));
        Assert.Equal("connection reset", _runner.GetStatus().LastError);
    }

    public async ValueTask DisposeAsync()
    {
        _control.AllowStop.TrySetResult();
        _control.Kill();
        await _stopping.CancelAsync();
        await _run.WaitAsync(Journal.Limit);
        _session.Dispose();
        _stopping.Dispose();
    }

    private sealed class ChildControl
    {
        public bool IgnoreCancellation { get; set; }

        /// <summary>A cooperative child finishes its stop once this completes.</summary>
        public TaskCompletionSource AllowStop { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private readonly TaskCompletionSource _killed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task Killed => _killed.Task;

        public void Kill() => _killed.TrySetResult();
    }

    private sealed class JournalChild(Journal journal, ChildControl control) : BackgroundService
    {
        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            journal.Add("child started");
            using (stoppingToken.Register(() => journal.Add("child told to stop")))
            {
                if (control.IgnoreCancellation)
                {
                    await control.Killed;
                }
                else
                {
                    try
                    {
                        await Task.Delay(Timeout.Infinite, stoppingToken);
                    }
                    catch (OperationCanceledException)
                    {
                    }

                    await control.AllowStop.Task;
                }
            }

            journal.Add("child ended");
        }
    }

    private sealed class LifecycleChild(Journal journal) : IHostedLifecycleService
    {
        public Task StartingAsync(CancellationToken cancellationToken) => Record("starting");

        public Task StartAsync(CancellationToken cancellationToken) => Record("start");

        public Task StartedAsync(CancellationToken cancellationToken) => Record("started");

        public Task StoppingAsync(CancellationToken cancellationToken) => Record("stopping");

        public Task StopAsync(CancellationToken cancellationToken) => Record("stop");

        public Task StoppedAsync(CancellationToken cancellationToken) => Record("stopped");

        private Task Record(string entry)
        {
            journal.Add(entry);
            return Task.CompletedTask;
        }
    }
}
