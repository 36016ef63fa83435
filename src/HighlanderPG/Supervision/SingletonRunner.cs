using HighlanderPG.Diagnostics;
using HighlanderPG.Leasing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Supervision;

/// <summary>
/// Supervises one singleton on this node: contend for its lock, run a fresh child while holding it, stop the child
/// before the lock is released or the lease ends, restart it by its policy, escalate what cannot be stopped.
/// </summary>
internal sealed class SingletonRunner : ISessionObserver
{
    private readonly SingletonRegistration _registration;
    private readonly ClusterSingletonOptions _singleton;
    private readonly HighlanderOptions _options;
    private readonly LeaseTimings _timings;
    private readonly ILockSession _session;
    private readonly IDisposable _observation;
    private readonly IServiceProvider _services;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Action<SingletonStateChanged> _publish;
    private readonly Action _stopHost;
    private readonly Lock _gate = new();
    private readonly bool _observed; // false for a rehearsal (HighlanderNode.RehearseAsync): no span, no measurement
    private SingletonState _state = SingletonState.Disconnected;
    private DateTimeOffset _since;
    private int _restarts;
    private string? _lastError;
    private bool _lastEndFailed; // whether the child's last end that called for a restart was a failure (only the supervising loop uses it)
    private Lease? _lease;
    private TaskCompletionSource? _stepDownRequested;
    private TimeSpan? _stepDownHoldOff; // the hold-off asked for with the current step-down (null: the node's StepDownHoldOff)
    private TaskCompletionSource? _released;

    public SingletonRunner(
        SingletonRegistration registration,
        ClusterSingletonOptions singleton,
        long key,
        HighlanderOptions options,
        LeaseTimings timings,
        ILockSession session,
        IServiceProvider services,
        TimeProvider time,
        ILogger logger,
        Action<SingletonStateChanged> publish,
        Action stopHost,
        bool rehearsal = false)
    {
        _observed = !rehearsal;
        _registration = registration;
        _singleton = singleton;
        Key = key;
        _options = options;
        _timings = timings;
        _session = session;
        _services = services;
        _time = time;
        _logger = logger;
        _publish = publish;
        _stopHost = stopHost;
        _since = time.GetUtcNow();
        _observation = session.Observe(key, this);
    }

    public string Name => _registration.Name;

    public long Key { get; }

    /// <summary>The lease this runner leads under (or is starting under), if any.</summary>
    internal Lease? CurrentLease
    {
        get
        {
            lock (_gate)
            {
                return _lease;
            }
        }
    }

    /// <summary>The node-id patterns this singleton prefers under the spread placement.</summary>
    public IList<string> PreferredNodes => _singleton.PreferredNodes;

    public SingletonStatus GetStatus()
    {
        lock (_gate)
        {
            var leader = _lease is { IsLost: false } lease
                ? new LeaderInfo(_options.NodeId, _session.BackendPid, HolderQuery.ApplicationNamePrefix + _options.NodeId, null, lease.AcquiredAt)
                : _session.GetHolder(Key);
            return new SingletonStatus(Name, Key, _state, _since, _restarts, _lastError, _lease is { IsLost: false } held ? held.Epoch : null, leader);
        }
    }

    /// <summary>
    /// Asks this runner to step down and not contend again for <paramref name="holdOff"/> (default: the node's
    /// <see cref="HighlanderOptions.StepDownHoldOff"/>); completes when the lock is released, or at once when not leading.
    /// </summary>
    /// <param name="holdOff">How long not to contend again.</param>
    /// <param name="only">Step down only while leading under this lease (null: whatever lease it leads under).</param>
    public Task StepDownAsync(TimeSpan? holdOff = null, Lease? only = null)
    {
        lock (_gate)
        {
            if (_lease is null || _lease.IsLost || _stepDownRequested is null || _released is null || (only is not null && _lease != only))
            {
                return Task.CompletedTask;
            }

            if (_stepDownRequested.TrySetResult())
            {
                _stepDownHoldOff = holdOff;
            }
            return _released.Task;
        }
    }

    public async Task RunAsync(CancellationToken stopping)
    {
        var intensity = new RestartIntensity(_time, _singleton.MaxRestarts, _singleton.RestartWindow);
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                TimeSpan holdOff;
                try
                {
                    SetState(_session.IsConnected ? SingletonState.Following : SingletonState.Disconnected, "contending");
                    var lease = await _session.AcquireAsync(Key, Name, stopping).ConfigureAwait(false);
                    var outcome = await LeadAsync(lease, stopping).ConfigureAwait(false);
                    switch (outcome)
                    {
                        case Outcome.Restart:
                            if (!intensity.TryRecord())
                            {
                                Log.CrashLoop(_logger, Name, _singleton.MaxRestarts, _singleton.RestartWindow, _singleton.CrashLoopBehavior);
                                if (_observed)
                                {
                                    HighlanderMetrics.Escalations.Add(1, HighlanderMetrics.Tags(Name));
                                }

                                if (!_lastEndFailed)
                                {
                                    // Not a crash: a child that keeps returning by itself, restarted each time under RestartPolicy.Always.
                                    SetError($"the child returned by itself more than {_singleton.MaxRestarts} times within {_singleton.RestartWindow} under {nameof(RestartPolicy)}.{_singleton.RestartPolicy}: a child that returns is restarted, so a long-running service must return only when its stopping token fires (or use {nameof(RestartPolicy)}.{nameof(RestartPolicy.OnFailure)} or {nameof(RestartPolicy.Never)})");
                                }

                                SetState(SingletonState.Faulted, $"needed more than {_singleton.MaxRestarts} restarts within {_singleton.RestartWindow}");
                                if (_singleton.CrashLoopBehavior == CrashLoopBehavior.StopHost)
                                {
                                    _stopHost();
                                }

                                return;
                            }

                            lock (_gate)
                            {
                                _restarts++;
                            }

                            if (_observed)
                            {
                                HighlanderMetrics.Restarts.Add(1, HighlanderMetrics.Tags(Name));
                            }

                            holdOff = _singleton.RestartDelay;
                            break;
                        case Outcome.SteppedDown:
                            lock (_gate)
                            {
                                holdOff = _stepDownHoldOff ?? _options.StepDownHoldOff;
                                _stepDownHoldOff = null;
                            }

                            if (holdOff > TimeSpan.Zero)
                            {
                                // The session keeps the key from being tried meanwhile, while this runner follows at once:
                                // it sees (and reports) who took over, instead of waiting blind.
                                _session.HoldOff(Key, holdOff);
                                SetState(_session.IsConnected ? SingletonState.Following : SingletonState.Disconnected, $"stepped down: not contending for {holdOff}");
                                holdOff = TimeSpan.Zero;
                            }

                            break;
                        default:
                            holdOff = TimeSpan.Zero;
                            break;
                    }
                }
                catch (OperationCanceledException) when (stopping.IsCancellationRequested)
                {
                    break;
                }
                catch (Exception ex)
                {
                    // Never let the runner die: a singleton nobody contends for would run nowhere.
                    Log.RunnerError(_logger, ex, Name);
                    SetError($"{ex.GetType().Name}: {ex.Message}");
                    holdOff = _options.ReconnectMaxDelay;
                }

                if (holdOff > TimeSpan.Zero && !stopping.IsCancellationRequested)
                {
                    SetState(_session.IsConnected ? SingletonState.Following : SingletonState.Disconnected, $"waiting {holdOff} before contending again");
                    try
                    {
                        await Task.Delay(holdOff, _time, stopping).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        break;
                    }
                }
            }
        }
        finally
        {
            bool faulted;
            lock (_gate)
            {
                faulted = _state == SingletonState.Faulted;
            }

            if (!faulted)
            {
                SetState(SingletonState.Stopped, "the node stopped");
            }

            _observation.Dispose();
        }
    }

    private async Task<Outcome> LeadAsync(Lease lease, CancellationToken stopping)
    {
        Log.Acquired(_logger, Name, Key);
        if (_observed)
        {
            HighlanderActivities.OnAcquired(_options.NodeId, Name, Key, lease.Epoch);
            HighlanderMetrics.Acquisitions.Add(1, HighlanderMetrics.Tags(Name));
        }

        Task stepDownTask;
        lock (_gate)
        {
            _lease = lease;
            _stepDownRequested = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _stepDownHoldOff = null;
            _released = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            stepDownTask = _stepDownRequested.Task;
        }

        var childGone = true;
        var reason = "released";
        LeaseGuard.Watch? watch = null;
        try
        {
            SetState(SingletonState.Starting, "acquired the lock");
            using var lostCts = CancellationTokenSource.CreateLinkedTokenSource(lease.LostToken);
            using var startCts = CancellationTokenSource.CreateLinkedTokenSource(lease.LostToken, stopping);
            var leadership = new Leadership(Name, _options.NodeId, Key, lease.AcquiredAt, lease.Epoch, _options.Namespace, _options.FencingSchema, lostCts.Token);
            await using var child = ChildIncarnation.Create(_registration, _services, leadership);

            // From here until the child is known to be gone, the lease guard (on its own thread) escalates the child if it
            // still runs at its lease's escalation point, whatever happens to this runner or the thread pool.
            watch = _session.Guard.Start(lease, () => child.IsRunning, w => _ = EscalateAsync(w, $"its child did not stop by the end of its lease ({lease.LossReason}): {child.DescribeRunning()}"));
            if (lease.IsLost)
            {
                // Lost between the grant and here (the session given up or broken while this runner waited for a thread, or
                // built its child): a session given up retires once no watch is left, and it found none, so the lock may be
                // another node's already. The child must not start at all, not even for a moment. Checked after the watch
                // is registered: a loss after this check finds the watch, and the session then waits for the child.
                reason = $"lease lost before the child started: {lease.LossReason}";
                Log.LeadershipLost(_logger, Name, reason);
                if (_observed)
                {
                    HighlanderActivities.OnLeadershipLost(_options.NodeId, Name, Key, lease.Epoch, reason);
                    HighlanderMetrics.LeadershipLosses.Add(1, HighlanderMetrics.Tags(Name));
                }

                SetError(reason);
                SetState(_session.IsConnected ? SingletonState.Following : SingletonState.Disconnected, reason);
                return Outcome.Contend;
            }

            childGone = false;
            child.Begin(startCts.Token);
            using var lostSignal = new CancellationSignal(lease.LostToken);
            using var stopSignal = new CancellationSignal(stopping);
            var lost = lostSignal.Task;
            var stop = stopSignal.Task;

            // Starting is bounded like running: a StartAsync still busy when the lease is lost is stopped (or escalated).
            var first = await Task.WhenAny(child.Started, lost, stop, stepDownTask).ConfigureAwait(false);
            var completion = child.Completion;
            if (first == child.Started)
            {
                if (child.StartError is null)
                {
                    Log.ChildStarted(_logger, Name);
                    SetState(SingletonState.Leading, "child started");
                    first = await Task.WhenAny(completion, lost, stop, stepDownTask).ConfigureAwait(false);
                }
                else
                {
                    first = completion;
                }
            }

            // The child's stopping token is linked to the lease (BackgroundService links its start token), so a child may
            // end in the same instant its lease is lost: then the loss (or stop, or step-down) is the cause, not the child.
            first = lost.IsCompleted ? lost : stop.IsCompleted ? stop : stepDownTask.IsCompleted ? stepDownTask : first;
            reason = first == completion ? child.Describe()
                : first == lost ? $"lease lost: {lease.LossReason}"
                : first == stop ? "the node is stopping"
                : "step-down requested";
            if (first == lost)
            {
                Log.LeadershipLost(_logger, Name, lease.LossReason ?? "unknown");
                if (_observed)
                {
                    HighlanderActivities.OnLeadershipLost(_options.NodeId, Name, Key, lease.Epoch, lease.LossReason ?? "unknown");
                    HighlanderMetrics.LeadershipLosses.Add(1, HighlanderMetrics.Tags(Name));
                }
            }
            else if (first == stepDownTask)
            {
                Log.SteppingDown(_logger, Name, reason);
                if (_observed)
                {
                    HighlanderActivities.OnSteppingDown(_options.NodeId, Name, Key, lease.Epoch, reason);
                }
            }

            SetState(SingletonState.Stopping, reason);
            await lostCts.CancelAsync().ConfigureAwait(false);
            var stopStarted = _time.GetTimestamp();
            childGone = await child.StopAsync(_timings.StopTimeout, lease, _time).ConfigureAwait(false);
            if (!childGone)
            {
                await EscalateAsync(watch, $"its child did not stop within {_timings.StopTimeout} after it was told to ({reason}): {child.DescribeRunning()}").ConfigureAwait(false);

                // A custom handler returned: the lock stays held until the child is really gone (or the lease is).
                var exited = child.Exited;
                await Task.WhenAny(exited, lost).ConfigureAwait(false);
                childGone = exited.IsCompleted;
                if (!childGone)
                {
                    _ = exited.ContinueWith(static (_, w) => ((LeaseGuard.Watch)w!).Dispose(), watch, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
                }
            }
            else if (first != completion)
            {
                // Told to stop: how long it took (a child that ended by itself had nothing to stop, and is logged below).
                var elapsed = _time.GetElapsedTime(stopStarted);
                Log.ChildStopped(_logger, Name, elapsed);
                if (_observed)
                {
                    HighlanderMetrics.ChildStop.Record(elapsed.TotalSeconds, HighlanderMetrics.Tags(Name));
                }
            }

            var outcome = Outcome.Contend;
            if (first == completion)
            {
                var failed = child.Error is not null;
                _lastEndFailed = failed;
                if (failed)
                {
                    Log.ChildFailed(_logger, child.Error!, Name);
                    SetError(child.Describe());
                }

                var restart = _singleton.RestartPolicy == RestartPolicy.Always || (failed && _singleton.RestartPolicy == RestartPolicy.OnFailure);
                Log.ChildCompleted(_logger, Name, _singleton.RestartPolicy, failed ? "failed" : "completed normally");
                if (restart)
                {
                    outcome = Outcome.Restart;
                }
                else
                {
                    // Keep the lock so the work does not run again elsewhere, until the node stops, steps down or loses the session.
                    SetState(SingletonState.Completed, $"child {(failed ? "failed" : "completed")}; restart policy {_singleton.RestartPolicy}");
                    first = await Task.WhenAny(lost, stop, stepDownTask).ConfigureAwait(false);
                    if (first == lost)
                    {
                        Log.LeadershipLost(_logger, Name, lease.LossReason ?? "unknown");
                        if (_observed)
                        {
                            HighlanderActivities.OnLeadershipLost(_options.NodeId, Name, Key, lease.Epoch, lease.LossReason ?? "unknown");
                        }
                    }

                    reason = first == lost ? $"lease lost: {lease.LossReason}" : first == stop ? "the node is stopping" : "step-down requested";
                }
            }
            else if (first == lost)
            {
                SetError(reason);
            }

            return first == stepDownTask ? Outcome.SteppedDown : outcome;
        }
        finally
        {
            if (childGone)
            {
                watch?.Dispose(); // a child that may still run stays watched
            }

            // Unlock (and tell the others) only once the child is gone; a lost lease went with its session already.
            if (!lease.IsLost && childGone)
            {
                await _session.ReleaseAsync(lease).ConfigureAwait(false);
                Log.Released(_logger, Name, Key, reason);
                if (_observed)
                {
                    HighlanderActivities.OnReleased(_options.NodeId, Name, Key, lease.Epoch, reason);
                }
            }

            TaskCompletionSource? waiting;
            lock (_gate)
            {
                _lease = null;
                waiting = _released;
                _stepDownRequested = null;
                _released = null;
            }

            waiting?.TrySetResult();
        }
    }

    /// <summary>
    /// Escalates a child that could not be stopped in time, once per watch (the runner and the lease guard may both get
    /// there). Called on the guard's thread too: everything before the handler's first await runs synchronously.
    /// </summary>
    private async Task EscalateAsync(LeaseGuard.Watch watch, string reason)
    {
        if (!watch.TryClaimEscalation())
        {
            return;
        }

        var lease = watch.Lease;
        Log.Escalating(_logger, Name, reason);
        if (!_observed)
        {
            // A rehearsal's lock is private (a random key): no other node can ever run its child, so a child of it that does
            // not stop endangers nothing, and the node's escalation (which may end the process) is not for it.
            return;
        }

        HighlanderActivities.OnEscalating(_options.NodeId, Name, Key, lease.Epoch, reason);
        HighlanderMetrics.Escalations.Add(1, HighlanderMetrics.Tags(Name));

        var context = new EscalationContext(Name, _options.NodeId, reason, RemainingLease(lease));
        if (_options.OnEscalation is { } handler)
        {
            try
            {
                await handler(context).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                Log.RunnerError(_logger, ex, Name);
            }

            return;
        }

        Environment.FailFast($"HighlanderPG: escalating singleton '{Name}' on node '{_options.NodeId}': {reason}. Ending the process so that its PostgreSQL session ends and the child cannot outlive the lease.");
    }

    /// <summary>
    /// How long until the server may give <paramref name="lease"/>'s lock to another node, on this node's clock: the last
    /// acknowledged send + the lease − now (for a lease still held: if the node went silent now); zero when that point
    /// has passed or the session broke (the lock may be gone already). See docs/lease-protocol.md, "The client-side deadline".
    /// </summary>
    internal TimeSpan RemainingLease(Lease lease) =>
        LeaseTimings.Until(lease.IsLost ? lease.ServerMayFreeAtTimestamp : _session.ServerMayFreeTimestamp, _time);

    void ISessionObserver.OnConnectionChanged(string? lossReason)
    {
        SingletonStateChanged? attemptFailed = null;
        lock (_gate)
        {
            if (_state is not (SingletonState.Following or SingletonState.Disconnected))
            {
                return;
            }

            if (lossReason is not null && _state == SingletonState.Disconnected)
            {
                // A connection attempt failed (or was refused) while already disconnected: published all the same, with
                // Previous == Current, so that watchers can await attempts instead of polling.
                _lastError = lossReason;
                attemptFailed = new SingletonStateChanged(Name, _state, _state, _time.GetUtcNow(), lossReason, _options.NodeId, _session.GetHolder(Key));
            }
        }

        if (attemptFailed is not null)
        {
            _publish(attemptFailed);
            return;
        }

        if (lossReason is not null)
        {
            SetError(lossReason);
        }

        SetState(lossReason is null ? SingletonState.Following : SingletonState.Disconnected, lossReason ?? "connected");
    }

    void ISessionObserver.OnHolderChanged(LeaderInfo? holder)
    {
        SingletonStateChanged change;
        lock (_gate)
        {
            if (_state is not (SingletonState.Following or SingletonState.Disconnected))
            {
                return;
            }

            var leader = holder?.NodeId ?? holder?.ApplicationName ?? (holder is null ? "nobody" : $"backend {holder.BackendPid}");
            change = new SingletonStateChanged(Name, _state, _state, _time.GetUtcNow(), $"led by {leader}", _options.NodeId, holder);
        }

        if (holder is not null)
        {
            Log.Following(_logger, Name, change.Reason[7..]);
        }

        _publish(change);
    }

    private void SetError(string error)
    {
        lock (_gate)
        {
            _lastError = error;
        }
    }

    private void SetState(SingletonState state, string reason)
    {
        SingletonStateChanged change;
        lock (_gate)
        {
            if (_state == state)
            {
                return;
            }

            var leader = _lease is { IsLost: false } ? new LeaderInfo(_options.NodeId, _session.BackendPid, HolderQuery.ApplicationNamePrefix + _options.NodeId, null, _lease.AcquiredAt) : _session.GetHolder(Key);
            change = new SingletonStateChanged(Name, _state, state, _time.GetUtcNow(), reason, _options.NodeId, leader);
            _state = state;
            _since = change.At;
        }

        _publish(change);
    }

    private enum Outcome
    {
        Contend,
        Restart,
        SteppedDown,
    }
}
