using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// The node's one dedicated PostgreSQL session: it holds the advisory locks of all this node's singletons,
/// carries the server-enforced lease (<c>idle_session_timeout</c>), renews it with heartbeats, and sits in
/// <see cref="NpgsqlConnection.WaitAsync(CancellationToken)"/> between round trips so that a server-side close and
/// release notifications are seen at once.
/// </summary>
/// <remarks>
/// This is the loop: it alone does I/O on the connection, bounds every round trip by the lease's deadline
/// (<see cref="LeaseClock"/>) and wires the <see cref="LeaseGuard"/>. What is wanted and held is kept in the
/// <see cref="KeyLedger"/>; the session is opened by <see cref="SessionBootstrap"/>; the statements are
/// <see cref="LockProtocol"/>'s and <see cref="EpochBumper"/>'s. This file connects, reconnects and gives sessions up;
/// LockSession.RoundTrips.cs serves one session (its round trips and waits). Runners talk to it through <see cref="ILockSession"/>,
/// whose calls only change the ledger and wake the loop. See docs/lease-protocol.md.
/// </remarks>
internal sealed partial class LockSession : ILockSession
{
    private readonly HighlanderOptions _options;
    private readonly LeaseTimings _timings;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly LeaseClock _clock;
    private readonly string _dataSourceName;
    private readonly SessionBootstrap _bootstrap;
    private readonly KeyLedger _ledger = new();
    private readonly Lock _wakeGate = new();
    private readonly LeaseGuard _guard;
    private volatile bool _expired;
    private long _crashSeenAt = long.MinValue;
    private bool _wakeRequested;
    private CancellationTokenSource? _waitCts;
    private int _backendPid;
    private long _lockDelayUntil = long.MinValue;
    private readonly ServerClock _serverClock;
    private long _nextHolderQuery = long.MinValue;
    private bool _holderQueryPending;

    public LockSession(HighlanderOptions options, LeaseTimings timings, NpgsqlDataSource dataSource, string dataSourceName, int singletons, TimeProvider time, ILogger logger)
    {
        _options = options;
        _timings = timings;
        _dataSourceName = dataSourceName;
        _time = time;
        _logger = logger;
        _clock = new LeaseClock(time, timings);
        _serverClock = new ServerClock(time, timings.ClockStepTolerance);
        _guard = new LeaseGuard(time, options.NodeId, OnStopPoint);
        _ledger.HoldOffClock = time;
        _bootstrap = new SessionBootstrap(options, timings, dataSource, singletons, logger);
    }

    private readonly SessionObservers _observers = new();

    /// <inheritdoc/>
    public IDisposable Observe(long key, ISessionObserver observer) => _observers.Add(key, observer);

    public bool IsConnected { get; private set; }

    public string? LastError { get; private set; }

    public int BackendPid => Volatile.Read(ref _backendPid);

    /// <inheritdoc/>
    public LeaseGuard Guard => _guard;

    /// <inheritdoc/>
    public long ServerMayFreeTimestamp => BackendPid == 0 ? long.MinValue : _clock.ServerMayFreeTimestamp;

    /// <summary>Wakes when the set of keys to wait for changes (for the follower waiter).</summary>
    public event Action? WantsChanged;

    /// <summary>
    /// Called on the session's loop with the keys of a batch of releases right after it was handed to the connection,
    /// before the server's answer (<see cref="Hosting.HighlanderNode.ReleasesSentInline"/>). Must be quick and not throw.
    /// </summary>
    internal Action<long[]>? ReleasesSent { get; set; }

    /// <inheritdoc/>
    public Task<Lease> AcquireAsync(long key, string name, CancellationToken cancellationToken)
    {
        var want = _ledger.AddWant(key, name);
        want.Registration = cancellationToken.Register(() =>
        {
            _ledger.CancelWant(want);
            want.Done.TrySetCanceled(cancellationToken);
            WantsChanged?.Invoke();
        });
        Wake();
        WantsChanged?.Invoke();
        return want.Done.Task;
    }

    /// <inheritdoc/>
    public Task ReleaseAsync(Lease lease)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!_ledger.QueueRelease(lease, done, out var gathered))
        {
            return Task.CompletedTask;
        }

        if (!gathered)
        {
            Wake(); // held for a gathering, it goes with the last one or when the gathering ends: no need to wake the loop for each
        }
        return done.Task;
    }

    /// <summary>
    /// Many runners are about to release together (the node stops, a drain): their releases go in one batch once all
    /// are queued, or after <paramref name="limit"/> whatever is missing (<see cref="KeyLedger.GatherReleases"/>).
    /// </summary>
    public void GatherReleases(TimeSpan limit, IReadOnlyCollection<long>? keys = null)
    {
        _ledger.GatherReleases(_time.GetTimestamp() + Delta(limit), keys);
        Wake(); // its wait ends at the gathering's end at the latest
    }

    /// <inheritdoc/>
    public LeaderInfo? GetHolder(long key) => _ledger.GetHolder(key);

    /// <summary>Grants <paramref name="key"/> without an epoch bump even when fencing is on (a rehearsal's private key), or as usual again.</summary>
    public void SetNeverFenced(long key, bool on) => _ledger.SetNeverFenced(key, on);

    /// <summary>Keys this node wants but does not hold, with the backend pid of their last seen holder.</summary>
    public List<(long Key, int? HolderPid)> GetWaitTargets() => _ledger.GetWaitTargets();

    /// <summary>One wanted key per distinct holder, for the follower waiter (<see cref="KeyLedger.WatchTargets"/>).</summary>
    public List<(int HolderPid, long Key)> WatchTargets() => _ledger.WatchTargets();

    /// <summary>The waiter watches these holders now, or none.</summary>
    public void SetWatched(IEnumerable<int>? holderPids) => _ledger.SetWatched(holderPids);

    /// <summary>Whether the follower waiter watches <paramref name="key"/>'s holder now.</summary>
    public bool IsWatching(long key) => _ledger.Watches(key);

    /// <summary>The waiter saw <paramref name="key"/> freed: try every wanted key now, and ask again who holds that holder's keys.</summary>
    public void HolderGone(long key)
    {
        _ledger.HolderGone(key);
        Wake();
    }

    /// <summary>Asks the loop to try the wanted locks now (a lock may have been freed).</summary>
    public void Poke()
    {
        _ledger.Poke();
        Wake();
    }

    private void Wake()
    {
        CancellationTokenSource? cts;
        lock (_wakeGate)
        {
            _wakeRequested = true;
            cts = _waitCts;
        }

        try
        {
            cts?.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public async Task RunAsync(CancellationToken stopping)
    {
        var backoff = new Backoff(_options.ReconnectMinDelay, _options.ReconnectMaxDelay);
        while (!stopping.IsCancellationRequested)
        {
            var connection = default(NpgsqlConnection);
            var session = new SessionIo();
            string reason;
            Exception? error = null;
            var refused = false;
            var byDeadline = false;
            var connectedAt = long.MinValue;
            try
            {
                connection = await ConnectAsync(stopping).ConfigureAwait(false);
                connectedAt = _time.GetTimestamp();
                await ServeAsync(connection, session, stopping).ConfigureAwait(false);
                reason = "the node is stopping";
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested)
            {
                reason = "the node is stopping";
            }
            catch (RefusedException ex)
            {
                refused = true;
                reason = ex.Message;
            }
            catch (LeaseExpiringException ex)
            {
                byDeadline = true;
                reason = Describe(ex);
            }
            catch (Exception ex) when (connection is null)
            {
                reason = "cannot connect: " + ex.Message;
                error = ex;
            }
            catch (Exception ex)
            {
                reason = Describe(ex);
                error = ex;
                if (ex is PostgresException { SqlState: PostgresErrorCodes.CrashShutdown })
                {
                    // Another backend crashed and the server reinitialised: every lock is gone, but the postmaster's
                    // start time does not move. Apply the lock-delay from now (holders cut off meanwhile may still run).
                    _crashSeenAt = _time.GetTimestamp();
                }
            }

            // Children are told first, the measurement and status second, logs last: whoever sees the log sees the state it
            // describes, and whoever sees the state (a singleton Disconnected, the health check) sees the loss counted.
            var sinceAck = _clock.HasAck ? _timings.DeadlineAfterAck - _clock.UntilDeadline : TimeSpan.Zero;
            var lost = LoseAll(reason, byDeadline);
            if (!stopping.IsCancellationRequested)
            {
                LastError = reason;
                if (connection is not null)
                {
                    HighlanderMetrics.SessionLosses.Add(1, HighlanderMetrics.Tags());
                }
            }

            SetConnected(false, reason);
            Retire(connection, session.Abandoned, lost);

            // A session that broke right after connecting gets no fresh start of the backoff: only one that lasted.
            if (connectedAt != long.MinValue && _time.GetElapsedTime(connectedAt) >= _timings.Lease)
            {
                backoff.Reset();
            }

            var retry = refused ? _options.ReconnectMaxDelay : backoff.Next();
            if (!stopping.IsCancellationRequested)
            {
                if (byDeadline)
                {
                    Log.LeaseExpiring(_logger, sinceAck);
                }

                if (refused)
                {
                    Log.Refused(_logger, _dataSourceName, reason, retry);
                }
                else if (connection is null)
                {
                    Log.ConnectFailed(_logger, error!, _dataSourceName, retry);
                }
                else if (error is not null || lost.Count > 0)
                {
                    Log.SessionLost(_logger, error, reason);
                }
            }

            if (!stopping.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(retry, _time, stopping).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                }
            }
        }

        _guard.Dispose();
        _holdOffTimer?.Dispose();
    }

    /// <summary>
    /// Enforces the stop point even when the session loop is held up (a slow logger, a starved thread pool): on the
    /// guard's own thread, the leases are lost at once, and the loop gives the session up when it next runs.
    /// </summary>
    private void OnStopPoint()
    {
        if (!_clock.HasAck || !_clock.MustStop)
        {
            return;
        }

        _expired = true;
        foreach (var lease in _ledger.HeldLeases())
        {
            lease.Lose("the lease is about to expire: the server did not answer in time", _clock.DeadlineTimestamp, _clock.ServerMayFreeTimestamp);
        }

        // Waking the loop cancels its wait, whose callbacks (Npgsql's) must not run on the guard's thread.
        ThreadPool.UnsafeQueueUserWorkItem(static session => session.Wake(), this, preferLocal: false);
    }

    private void Acknowledge(long sent)
    {
        if (_expired)
        {
            throw new LeaseExpiringException();
        }

        _clock.Acknowledge(sent);
        _guard.SetStopPoint(_clock.StopTimestamp);
    }

    private async Task<NpgsqlConnection> ConnectAsync(CancellationToken stopping)
    {
        _clock.Reset();
        _expired = false;
        var sent = _time.GetTimestamp();
        var start = await _bootstrap.OpenAsync(
            OnNotification,
            () => _crashSeenAt == long.MinValue ? null : _time.GetElapsedTime(_crashSeenAt),
            stopping,
            OnControl).ConfigureAwait(false);
        try
        {
            Acknowledge(sent);
        }
        catch
        {
            await start.Connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }

        Volatile.Write(ref _backendPid, start.BackendPid);
        _crashSeenAt = long.MinValue;
        var lockDelay = start.LockDelayRemaining;
        // A lock-delay still running from the last session (a clock step seen before it broke) is kept.
        if (lockDelay > TimeSpan.Zero)
        {
            _lockDelayUntil = Math.Max(_lockDelayUntil, _time.GetTimestamp() + LeaseTimings.ToTimestampDelta(lockDelay, _time));
        }
        if (lockDelay > TimeSpan.Zero && start.ServerChange is null)
        {
            Log.LockDelay(_logger, start.ServerUptime, lockDelay);
        }

        // The server's clock compared with this node's earlier sessions' readings (a step while reconnecting, or another server).
        ObserveServerClock(start.ServerTime, sent);

        _ledger.NewGeneration();
        ApplyHoldOffs(start.HoldOffs);
        Log.Connected(_logger, _dataSourceName, start.BackendPid, start.Version);
        LastError = null;
        SetConnected(true, null);
        return start.Connection;
    }

    /// <summary>Every held lease is lost with the session. Returns them.</summary>
    private List<Lease> LoseAll(string reason, bool byDeadline)
    {
        _guard.ClearStopPoint();
        var lost = _ledger.LoseAll();

        // Lost by the deadline: the children have until the deadline, and the server may free the locks no earlier than
        // the last acknowledged send + the lease. Lost because the session broke: the server may already have freed the
        // locks (so that point is unknown: now), and the children get no more than the stop timeout (never past the deadline).
        var escalateAt = _clock.EscalationTimestamp(byDeadline);
        var serverMayFreeAt = _clock.ServerMayFreeAfterLoss(byDeadline);
        foreach (var lease in lost)
        {
            lease.Lose(reason, escalateAt, serverMayFreeAt);
        }

        _guard.Poke();

        Volatile.Write(ref _backendPid, 0);
        return lost;
    }

    private void SetConnected(bool connected, string? reason)
    {
        if (IsConnected == connected && connected)
        {
            return;
        }

        // Also raised for each failed attempt while already disconnected: runners publish it (Previous == Current).
        IsConnected = connected;
        _observers.ConnectionChanged(reason);
    }

    /// <summary>
    /// Closes a given-up session's connection in the background, which ends its backend and frees its locks: only once every
    /// child that ran under its <paramref name="lost"/> leases is gone, or the lease has passed since now.
    /// </summary>
    /// <remarks>
    /// A session given up while its connection still works (a statement cancelled by <c>pg_cancel_backend</c>, a role's
    /// <c>statement_timeout</c>, <c>out of shared memory</c>) still holds its locks: closing it at once would free them
    /// while the children are still stopping (up to the stop timeout), and another node could start the same singleton.
    /// Kept open, the backend keeps the locks until the children are gone (invariant 4 of docs/lease-protocol.md: never
    /// unlock while a child may still run); it is idle meanwhile, so the server ends it the lease after it last heard from
    /// it, which is no later than the cap. A session the server already ended (killed backend, reset) lost its locks
    /// anyway: nothing changes. See docs/lease-protocol.md, "Faults and what each does".
    /// </remarks>
    private void Retire(NpgsqlConnection? connection, Task? abandoned, List<Lease> lost)
    {
        if (connection is null)
        {
            return;
        }

        _ = RetireAsync(connection, abandoned ?? Task.CompletedTask, lost);
    }

    private async Task RetireAsync(NpgsqlConnection connection, Task abandoned, List<Lease> lost)
    {
        using var cap = new CancellationTokenSource(_timings.Lease, _time);
        try
        {
            // A round trip may be stuck (blackholed): then the connection is disposed once it fails on its own (command timeout).
            await abandoned.ConfigureAwait(false);
        }
        catch
        {
            // The session is already given up; its stuck operation's error says nothing new.
        }

        try
        {
            await _guard.WhenUnwatchedAsync(lost, cap.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The lease has passed: the server may have ended the session by now, and with it its locks.
        }

        try
        {
            await connection.DisposeAsync().ConfigureAwait(false);
        }
        catch
        {
        }
    }

    private long Delta(TimeSpan span) => LeaseTimings.ToTimestampDelta(span, _time);

    private static string Describe(Exception ex) => ex switch
    {
        LeaseExpiringException => "the lease is about to expire: the server did not answer in time",
        PostgresException pg => $"{pg.SqlState}: {pg.MessageText}{ServerChecks.DescribeOutOfLocks(pg.SqlState)}",
        NpgsqlException { InnerException: { } inner } npg => $"{npg.Message} ({inner.Message})",
        _ => ex.Message,
    };

    private sealed class SessionIo
    {
        public Task? Abandoned { get; set; }
    }
}

/// <summary>The lease is about to expire: the server did not answer in time.</summary>
internal sealed class LeaseExpiringException() : Exception("The lease is about to expire: the server did not answer in time.");

/// <summary>The server cannot be used safely.</summary>
internal sealed class RefusedException(string message) : Exception(message);
