using System.Globalization;
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
/// Only the loop in <see cref="RunAsync"/> does I/O on the connection. Runners talk to it through
/// <see cref="AcquireAsync"/> and <see cref="ReleaseAsync"/>, which only change state under a lock and wake the loop.
/// </remarks>
internal sealed class LockSession
{
    internal const string Channel = "highlander";

    private readonly HighlanderOptions _options;
    private readonly NpgsqlDataSource _dataSource;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly LeaseClock _clock;
    private readonly string _dataSourceName;
    private readonly Lock _gate = new();
    private readonly Dictionary<long, Want> _wants = [];
    private readonly Dictionary<long, Lease> _held = [];
    private readonly Dictionary<long, LeaderInfo> _holders = [];
    private readonly List<(Lease Lease, TaskCompletionSource Done)> _releases = [];
    private readonly Dictionary<long, long> _unfenced = []; // key -> when to try its epoch bump (next)
    private readonly List<(Lease Lease, TaskCompletionSource Done)> _inflightReleases = [];
    private readonly LeaseGuard _guard;
    private volatile bool _expired;
    private long _crashSeenAt = long.MinValue;
    private bool _wantsChanged;
    private bool _poke;
    private bool _wakeRequested;
    private CancellationTokenSource? _waitCts;
    private int _generation;
    private int _backendPid;
    private long _lockDelayUntil;

    public LockSession(HighlanderOptions options, NpgsqlDataSource dataSource, string dataSourceName, TimeProvider time, ILogger logger)
    {
        _options = options;
        _dataSource = dataSource;
        _dataSourceName = dataSourceName;
        _time = time;
        _logger = logger;
        _clock = new LeaseClock(time, options.LeaseDuration, options.SafetyMargin, options.StopTimeout);
        _guard = new LeaseGuard(time, options.NodeId, OnStopPoint);
    }

    /// <summary>Raised (on the session loop) when the session connects or is lost; the argument is the loss reason, or null when connected.</summary>
    public event Action<string?>? ConnectionChanged;

    public bool IsConnected { get; private set; }

    public string? LastError { get; private set; }

    public int BackendPid => Volatile.Read(ref _backendPid);

    /// <summary>The node's lease guard: runners watch their children with it while those may run.</summary>
    public LeaseGuard Guard => _guard;

    /// <summary>Raised when another node's hold on a wanted key is first seen, changes, or ends.</summary>
    public event Action<long, LeaderInfo?>? HolderChanged;

    /// <summary>Wakes when the set of keys to wait for changes (for the follower waiter).</summary>
    public event Action? WantsChanged;

    /// <summary>Registers that a runner wants <paramref name="key"/>; completes when this session holds it.</summary>
    public Task<Lease> AcquireAsync(long key, string name, CancellationToken cancellationToken)
    {
        var want = new Want(key, name);
        lock (_gate)
        {
            if (_held.TryGetValue(key, out var stale) && stale.IsLost)
            {
                // Lost at the stop point (by the lease guard) while the loop is still giving the session up: it is gone with that session.
                _held.Remove(key);
                _unfenced.Remove(key);
            }

            if (_wants.ContainsKey(key) || _held.ContainsKey(key))
            {
                throw new InvalidOperationException($"Key {key} is already wanted or held by this node.");
            }

            _wants[key] = want;
            _wantsChanged = true;
        }

        want.Registration = cancellationToken.Register(() =>
        {
            lock (_gate)
            {
                if (_wants.TryGetValue(key, out var current) && current == want)
                {
                    _wants.Remove(key);
                }
            }

            want.Done.TrySetCanceled(cancellationToken);
            WantsChanged?.Invoke();
        });
        Wake();
        WantsChanged?.Invoke();
        return want.Done.Task;
    }

    /// <summary>Unlocks the lease's key and tells the other nodes, unless the lease is already gone with its session.</summary>
    public Task ReleaseAsync(Lease lease)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            if (!_held.TryGetValue(lease.Key, out var held) || held != lease)
            {
                return Task.CompletedTask;
            }

            _releases.Add((lease, done));
        }

        Wake();
        return done.Task;
    }

    /// <summary>The holder of <paramref name="key"/> last seen by this node (for a key it wants but does not hold).</summary>
    public LeaderInfo? GetHolder(long key)
    {
        lock (_gate)
        {
            return _holders.GetValueOrDefault(key);
        }
    }

    /// <summary>Keys this node wants but does not hold, with the backend pid of their last seen holder.</summary>
    public List<(long Key, int? HolderPid)> GetWaitTargets()
    {
        lock (_gate)
        {
            return _wants.Keys.Where(k => !_held.ContainsKey(k)).Select(k => (k, _holders.TryGetValue(k, out var h) ? h.BackendPid : (int?)null)).ToList();
        }
    }

    /// <summary>Asks the loop to try the wanted locks now (a lock may have been freed).</summary>
    public void Poke()
    {
        lock (_gate)
        {
            _poke = true;
        }

        Wake();
    }

    private void Wake()
    {
        CancellationTokenSource? cts;
        lock (_gate)
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
                connection = await ConnectAsync(session, stopping).ConfigureAwait(false);
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

            // Children are told first, status second, logs last: whoever sees the log sees the state it describes.
            var sinceAck = _clock.HasAck ? _options.LeaseDuration - _options.SafetyMargin - _clock.UntilDeadline : TimeSpan.Zero;
            var hadLeases = LoseAll(reason, byDeadline);
            if (!stopping.IsCancellationRequested)
            {
                LastError = reason;
            }

            SetConnected(false, reason);
            Retire(connection, session.Abandoned);

            // A session that broke right after connecting gets no fresh start of the backoff: only one that lasted.
            if (connectedAt != long.MinValue && _time.GetElapsedTime(connectedAt) >= _options.LeaseDuration)
            {
                backoff.Reset();
            }

            var retry = refused ? _options.ReconnectMaxDelay : backoff.Next();
            if (!stopping.IsCancellationRequested)
            {
                if (connection is not null)
                {
                    HighlanderMetrics.SessionLosses.Add(1, HighlanderMetrics.Tags());
                }

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
                else if (error is not null || hadLeases)
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
        List<Lease> held;
        lock (_gate)
        {
            held = [.. _held.Values];
        }

        foreach (var lease in held)
        {
            lease.Lose("the lease is about to expire: the server did not answer in time", _clock.DeadlineTimestamp);
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

    private async Task<NpgsqlConnection> ConnectAsync(SessionIo session, CancellationToken stopping)
    {
        _clock.Reset();
        _expired = false;
        var sent = _time.GetTimestamp();
        var connection = await _dataSource.OpenConnectionAsync(stopping).ConfigureAwait(false);
        try
        {
            int pid;
            bool inRecovery;
            int versionNum;
            double uptimeSeconds;
            string version;
            await using (var cmd = new NpgsqlCommand(
                "SELECT pg_backend_pid(), pg_is_in_recovery(), current_setting('server_version_num')::int, " +
                // The server's (re)start: the postmaster's start, or a later reinitialisation after a backend crash, which
                // shows as the checkpointer's start (visible with pg_read_all_stats or as superuser; otherwise null).
                "extract(epoch from clock_timestamp() - GREATEST(pg_postmaster_start_time(), " +
                "(SELECT max(backend_start) FROM pg_stat_activity WHERE backend_type = 'checkpointer')))::float8, current_setting('server_version')",
                connection))
            await using (var reader = await cmd.ExecuteReaderAsync(stopping).ConfigureAwait(false))
            {
                await reader.ReadAsync(stopping).ConfigureAwait(false);
                pid = reader.GetInt32(0);
                inRecovery = reader.GetBoolean(1);
                versionNum = reader.GetInt32(2);
                uptimeSeconds = reader.GetDouble(3);
                version = reader.GetString(4);
            }

            var refusal = ServerChecks.Check(versionNum, version, inRecovery, pid, connection.ProcessID, _options);
            if (refusal is not null)
            {
                throw new RefusedException(refusal);
            }

            if (pid != connection.ProcessID)
            {
                Log.SessionPooler(_logger, pid, connection.ProcessID);
            }

            await using (var cmd = new NpgsqlCommand(null, connection))
            {
                if (versionNum >= ServerChecks.MinimumVersionNum)
                {
                    // The server-side lease: the server ends this session, freeing its locks, after this long without a message.
                    // https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-IDLE-SESSION-TIMEOUT
                    // idle_in_transaction_session_timeout too: the fencing bump runs in a short transaction, and a session
                    // cut off inside it would otherwise not be "idle" for idle_session_timeout.
                    cmd.CommandText = "SELECT set_config('idle_session_timeout', $1, false), set_config('idle_in_transaction_session_timeout', $1, false)";
                    cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = ((long)_options.LeaseDuration.TotalMilliseconds).ToString(CultureInfo.InvariantCulture) });
                }
                else
                {
                    Log.WeakerMode(_logger, version);
                    // Whole seconds only: rounded so that the server never drops a client before the lease.
                    var lease = (int)Math.Ceiling(_options.LeaseDuration.TotalSeconds);
                    var idle = Math.Max(1, lease / 3);
                    cmd.CommandText = "SELECT set_config('tcp_keepalives_idle', $1, false), set_config('tcp_keepalives_interval', '1', false), set_config('tcp_keepalives_count', $2, false), set_config('idle_in_transaction_session_timeout', $3, false)";
                    cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = idle.ToString(CultureInfo.InvariantCulture) });
                    cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Math.Max(1, lease - idle + 1).ToString(CultureInfo.InvariantCulture) });
                    cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = ((long)_options.LeaseDuration.TotalMilliseconds).ToString(CultureInfo.InvariantCulture) });
                }

                await cmd.ExecuteNonQueryAsync(stopping).ConfigureAwait(false);
            }

            if (_options.Fencing)
            {
                await FencingSql.EnsureCreatedAsync(connection, _options.FencingSchema, stopping).ConfigureAwait(false);
            }

            connection.Notification += (_, e) => OnNotification(e.Payload);
            await using (var cmd = new NpgsqlCommand($"LISTEN {Channel}", connection))
            {
                await cmd.ExecuteNonQueryAsync(stopping).ConfigureAwait(false);
            }

            Acknowledge(sent);
            Volatile.Write(ref _backendPid, pid);

            var lockDelay = _options.EffectiveLockDelay - TimeSpan.FromSeconds(uptimeSeconds);
            if (_crashSeenAt != long.MinValue)
            {
                var sinceCrash = _options.EffectiveLockDelay - _time.GetElapsedTime(_crashSeenAt);
                lockDelay = sinceCrash > lockDelay ? sinceCrash : lockDelay;
                _crashSeenAt = long.MinValue;
            }

            _lockDelayUntil = lockDelay > TimeSpan.Zero ? _time.GetTimestamp() + ToTimestampDelta(lockDelay) : long.MinValue;
            if (lockDelay > TimeSpan.Zero)
            {
                Log.LockDelay(_logger, TimeSpan.FromSeconds(uptimeSeconds), lockDelay);
            }

            lock (_gate)
            {
                _generation++;
                _wantsChanged = true;
            }

            Log.Connected(_logger, _dataSourceName, pid, version);
            LastError = null;
            SetConnected(true, null);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private async Task ServeAsync(NpgsqlConnection connection, SessionIo session, CancellationToken stopping)
    {
        var nextHeartbeat = _time.GetTimestamp() + ToTimestampDelta(_options.HeartbeatInterval);
        while (!stopping.IsCancellationRequested)
        {
            if (_expired || _clock.MustStop)
            {
                throw new LeaseExpiringException();
            }

            List<(Lease Lease, TaskCompletionSource Done)> releases;
            long[] toTry = [];
            var now = _time.GetTimestamp();
            var heartbeatDue = now >= nextHeartbeat;
            lock (_gate)
            {
                releases = [.. _releases];
                _releases.Clear();

                // A try only when something may have changed: a release was announced, the waiter saw a lock freed,
                // a runner started wanting, or at each heartbeat (the backstop for crashed holders nobody watched).
                var mayTry = releases.Count == 0 && now >= _lockDelayUntil && (heartbeatDue || _poke || _wantsChanged);
                if (mayTry)
                {
                    toTry = [.. _wants.Keys.Where(k => !_held.ContainsKey(k))]; // never twice: session locks are re-entrant
                    _poke = false;
                    _wantsChanged = false;
                }
            }

            if (releases.Count > 0)
            {
                lock (_gate)
                {
                    _inflightReleases.AddRange(releases);
                }

                nextHeartbeat = await ReleaseBatchAsync(connection, session, releases).ConfigureAwait(false);
                lock (_gate)
                {
                    _inflightReleases.Clear();
                }

                continue;
            }

            if (toTry.Length > 0)
            {
                nextHeartbeat = await TryAcquireAsync(connection, session, toTry).ConfigureAwait(false);
                continue;
            }

            if (UnfencedDue(now) is { Length: > 0 } unfenced)
            {
                nextHeartbeat = await FenceAsync(connection, session, unfenced).ConfigureAwait(false);
                continue;
            }

            if (heartbeatDue)
            {
                nextHeartbeat = await HeartbeatAsync(connection, session).ConfigureAwait(false);
                continue;
            }

            await WaitAsync(connection, nextHeartbeat, stopping).ConfigureAwait(false);
        }
    }

    private async Task WaitAsync(NpgsqlConnection connection, long nextHeartbeat, CancellationToken stopping)
    {
        var until = Math.Min(nextHeartbeat, _clock.StopTimestamp);
        bool anyWants;
        lock (_gate)
        {
            anyWants = _wants.Count > 0;
        }

        if (anyWants && _lockDelayUntil > _time.GetTimestamp())
        {
            until = Math.Min(until, _lockDelayUntil);
        }

        lock (_gate)
        {
            if (_unfenced.Count > 0)
            {
                until = Math.Min(until, _unfenced.Values.Min());
            }
        }

        var timeout = _time.GetElapsedTime(_time.GetTimestamp(), until);
        if (timeout <= TimeSpan.Zero)
        {
            return;
        }

        var cts = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        lock (_gate)
        {
            if (_wakeRequested)
            {
                _wakeRequested = false;
                cts.Dispose();
                return;
            }

            _waitCts = cts;
        }

        try
        {
            cts.CancelAfter(timeout);
            await connection.WaitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            // Woken, timed out for the next heartbeat, or stopping: the connection stays usable.
        }
        finally
        {
            lock (_gate)
            {
                _waitCts = null;
                _wakeRequested = false;
            }

            cts.Dispose();
        }
    }

    private async Task<long> HeartbeatAsync(NpgsqlConnection connection, SessionIo session)
    {
        var sent = _time.GetTimestamp();
        await using var cmd = new NpgsqlCommand("SELECT pg_backend_pid()", connection);
        var pid = (int)(await RoundTripAsync(session, () => cmd.ExecuteScalarAsync()).ConfigureAwait(false))!;
        CheckPid(pid);
        return sent + ToTimestampDelta(_options.HeartbeatInterval);
    }

    private async Task<long> TryAcquireAsync(NpgsqlConnection connection, SessionIo session, long[] keys)
    {
        var sent = _time.GetTimestamp();
        var got = new List<long>();
        await using (var tryLock = new NpgsqlCommand("SELECT k, pg_try_advisory_lock(k), pg_backend_pid() FROM unnest($1::bigint[]) AS t(k)", connection))
        {
            tryLock.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
            await RoundTripAsync(session, ReadTriesAsync).ConfigureAwait(false);

            async Task<bool> ReadTriesAsync()
            {
                await using var reader = await tryLock.ExecuteReaderAsync().ConfigureAwait(false);
                while (await reader.ReadAsync().ConfigureAwait(false))
                {
                    CheckPid(reader.GetInt32(2));
                    if (reader.GetBoolean(1))
                    {
                        got.Add(reader.GetInt64(0));
                    }
                }

                return true;
            }
        }

        // Hand the acquired locks over first; who holds the others is asked afterwards, in a round trip of its own
        // (pg_locks is comparatively costly, and not needed to start a child).
        var granted = new List<(Want Want, Lease Lease)>();
        var unwanted = new List<Lease>();
        lock (_gate)
        {
            foreach (var key in got)
            {
                var lease = new Lease(key, _generation, _time.GetUtcNow());
                _held[key] = lease;
                _holders.Remove(key);
                if (_options.Fencing)
                {
                    // The runner gets the lease once its epoch is bumped (FenceAsync).
                    _unfenced[key] = long.MinValue;
                }
                else if (_wants.Remove(key, out var want))
                {
                    granted.Add((want, lease));
                }
                else
                {
                    unwanted.Add(lease); // the runner gave up meanwhile: release it at once
                }
            }

            foreach (var lease in unwanted)
            {
                _releases.Add((lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)));
            }
        }

        Grant(granted);
        var failed = keys.Except(got).ToArray();
        if (failed.Length > 0)
        {
            await UpdateHoldersAsync(connection, session, failed).ConfigureAwait(false);
        }

        WantsChanged?.Invoke();
        return sent + ToTimestampDelta(_options.HeartbeatInterval);
    }

    /// <summary>Learns who holds the keys this node could not take (for status, events and the follower waiter).</summary>
    private async Task UpdateHoldersAsync(NpgsqlConnection connection, SessionIo session, long[] keys)
    {
        var holders = new Dictionary<long, LeaderInfo>();
        await using (var cmd = new NpgsqlCommand(HolderQuery.Sql, connection))
        {
            cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
            await RoundTripAsync(session, ReadAsync).ConfigureAwait(false);

            async Task<bool> ReadAsync()
            {
                await using var reader = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
                while (await reader.ReadAsync().ConfigureAwait(false))
                {
                    var info = HolderQuery.Read(reader);
                    if (info.Leader.BackendPid != _backendPid)
                    {
                        holders[info.Key] = info.Leader;
                    }
                }

                return true;
            }
        }

        var changedHolders = new List<(long Key, LeaderInfo? Holder)>();
        lock (_gate)
        {
            foreach (var key in keys)
            {
                var before = _holders.GetValueOrDefault(key);
                if (holders.TryGetValue(key, out var holder))
                {
                    _holders[key] = holder;
                }
                else
                {
                    _holders.Remove(key);
                }

                var after = _holders.GetValueOrDefault(key);
                if (before?.BackendPid != after?.BackendPid || before?.ApplicationName != after?.ApplicationName)
                {
                    changedHolders.Add((key, after));
                }
            }
        }

        foreach (var (key, holder) in changedHolders)
        {
            HolderChanged?.Invoke(key, holder);
        }
    }

    private long[] UnfencedDue(long now)
    {
        lock (_gate)
        {
            return [.. _unfenced.Where(u => u.Value <= now).Select(u => u.Key)];
        }
    }

    /// <summary>
    /// Bumps the fencing epoch of one newly acquired key in its own short durable transaction, then hands the lease to
    /// its runner. A guarded transaction of the old leader holds the row <c>FOR SHARE</c>; the bump waits for it, bounded
    /// by a short <c>lock_timeout</c> so that the session never blocks for long, and is retried; other keys go on meanwhile.
    /// An error of the bump itself (e.g. no privilege) fails that acquisition only, not the session.
    /// </summary>
    private async Task<long> FenceAsync(NpgsqlConnection connection, SessionIo session, long[] due)
    {
        var sent = _time.GetTimestamp();
        long key = 0;
        string? name = null;
        lock (_gate)
        {
            // A key whose runner gave up meanwhile is not bumped, only released.
            foreach (var orphan in due.Where(k => !_wants.ContainsKey(k)))
            {
                _unfenced.Remove(orphan);
                if (_held.TryGetValue(orphan, out var lease))
                {
                    _releases.Add((lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)));
                }
            }

            foreach (var k in due.Where(_wants.ContainsKey))
            {
                key = k;
                name = _wants[k].Name;
                break;
            }
        }

        if (name is null)
        {
            return _time.GetTimestamp();
        }

        long epoch;
        try
        {
            epoch = await RoundTripAsync(session, BumpAsync).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.LockNotAvailable)
        {
            lock (_gate)
            {
                if (_unfenced.ContainsKey(key))
                {
                    _unfenced[key] = _time.GetTimestamp() + ToTimestampDelta(TimeSpan.FromMilliseconds(250));
                }
            }

            return sent + ToTimestampDelta(_options.HeartbeatInterval);
        }
        catch (PostgresException ex) when (ex.InvariantSeverity is "ERROR" && connection.State == System.Data.ConnectionState.Open)
        {
            Want? failed;
            lock (_gate)
            {
                _unfenced.Remove(key);
                _wants.Remove(key, out failed);
                if (_held.TryGetValue(key, out var lease))
                {
                    _releases.Add((lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)));
                }
            }

            failed?.Registration.Dispose();
            var hint = ex.SqlState == PostgresErrorCodes.InsufficientPrivilege
                ? $" (a node's role needs USAGE on schema {_options.FencingSchema} and SELECT, INSERT, UPDATE, DELETE on {_options.FencingSchema}.leases)"
                : "";
            failed?.Done.TrySetException(new InvalidOperationException($"Cannot bump the fencing epoch of '{name}' in {_options.FencingSchema}.leases: {ex.SqlState}: {ex.MessageText}{hint}", ex));
            return sent + ToTimestampDelta(_options.HeartbeatInterval);
        }

        var granted = new List<(Want Want, Lease Lease)>();
        lock (_gate)
        {
            _unfenced.Remove(key);
            if (_held.TryGetValue(key, out var lease))
            {
                lease.Epoch = epoch;
                if (_wants.Remove(key, out var want))
                {
                    granted.Add((want, lease));
                }
                else
                {
                    _releases.Add((lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)));
                }
            }
        }

        Grant(granted);
        return sent + ToTimestampDelta(_options.HeartbeatInterval);

        async Task<long> BumpAsync()
        {
            await using var tx = await connection.BeginTransactionAsync().ConfigureAwait(false);
            await using (var settings = new NpgsqlCommand("SELECT set_config('lock_timeout', '100', true), set_config('synchronous_commit', 'on', true)", connection, tx))
            {
                await settings.ExecuteNonQueryAsync().ConfigureAwait(false);
            }

            object? moved;
            await using (var move = new NpgsqlCommand(FencingSql.MoveName(_options.FencingSchema), connection, tx))
            {
                move.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
                move.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _options.Namespace });
                move.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
                moved = await move.ExecuteScalarAsync().ConfigureAwait(false);
            }

            long result;
            await using (var bump = new NpgsqlCommand(FencingSql.Bump(_options.FencingSchema), connection, tx))
            {
                bump.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
                bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _options.Namespace });
                bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
                bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _options.NodeId });
                bump.Parameters.Add(new NpgsqlParameter<string?> { TypedValue = _options.Endpoint, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
                bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Environment.MachineName });
                bump.Parameters.Add(new NpgsqlParameter<long?> { TypedValue = moved is long m ? m : null, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Bigint });
                result = (long)(await bump.ExecuteScalarAsync().ConfigureAwait(false))!;
            }

            await tx.CommitAsync().ConfigureAwait(false);
            return result;
        }
    }

    private void Grant(List<(Want Want, Lease Lease)> granted)
    {
        foreach (var (want, lease) in granted)
        {
            want.Registration.Dispose();
            if (!want.Done.TrySetResult(lease))
            {
                lock (_gate)
                {
                    _releases.Add((lease, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)));
                }

                Wake();
            }
        }
    }

    private async Task<long> ReleaseBatchAsync(NpgsqlConnection connection, SessionIo session, List<(Lease Lease, TaskCompletionSource Done)> releases)
    {
        var sent = _time.GetTimestamp();
        var keys = releases.Select(r => r.Lease.Key).ToArray();
        await using (var cmd = new NpgsqlCommand(
            "SELECT k, pg_advisory_unlock(k), pg_notify($2, k::text) FROM unnest($1::bigint[]) AS t(k)", connection))
        {
            cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Channel });
            await RoundTripAsync(session, () => cmd.ExecuteNonQueryAsync()).ConfigureAwait(false);
        }

        lock (_gate)
        {
            foreach (var (lease, _) in releases)
            {
                if (_held.TryGetValue(lease.Key, out var held) && held == lease)
                {
                    _held.Remove(lease.Key);
                }
            }
        }

        foreach (var (lease, done) in releases)
        {
            lease.Lose("released", _time.GetTimestamp());
            done.TrySetResult();
        }

        return sent + ToTimestampDelta(_options.HeartbeatInterval);
    }

    /// <summary>
    /// Awaits one round trip, but never past the point where children must stop: if the server does not answer
    /// by then, the operation is abandoned (left to fail on its own) and the session is given up.
    /// </summary>
    private async Task<T> RoundTripAsync<T>(SessionIo session, Func<Task<T>> start)
    {
        // The send time is taken before anything is sent: the server's idle timer starts no earlier than that.
        var sent = _time.GetTimestamp();
        var operation = start();
        if (!operation.IsCompleted)
        {
            var limit = _clock.UntilStop;
            using var cts = new CancellationTokenSource();
            var expired = Task.Delay(limit > TimeSpan.Zero ? limit : TimeSpan.Zero, _time, cts.Token);
            if (await Task.WhenAny(operation, expired).ConfigureAwait(false) != operation)
            {
                session.Abandoned = operation;
                throw new LeaseExpiringException();
            }

            cts.Cancel();
        }

        var result = await operation.ConfigureAwait(false);
        Acknowledge(sent);
        if (HighlanderMetrics.RoundTrip.Enabled)
        {
            HighlanderMetrics.RoundTrip.Record(_time.GetElapsedTime(sent).TotalSeconds, HighlanderMetrics.Tags());
        }

        return result;
    }

    private void CheckPid(int pid)
    {
        if (pid != _backendPid)
        {
            throw new RefusedException(
                $"the session's backend changed from pid {_backendPid} to {pid} between statements: a transaction-mode pooler (e.g. PgBouncer pool_mode=transaction) is in the way, and it silently breaks session advisory locks. Connect to PostgreSQL directly or through a session-mode pooler.");
        }
    }

    private void OnNotification(string payload)
    {
        if (!long.TryParse(payload, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var key))
        {
            return;
        }

        lock (_gate)
        {
            if (_wants.ContainsKey(key))
            {
                _poke = true;
            }
        }
    }

    /// <summary>Every held lease is lost with the session. Returns whether there were any.</summary>
    private bool LoseAll(string reason, bool byDeadline)
    {
        _guard.ClearStopPoint();
        List<Lease> lost;
        lock (_gate)
        {
            lost = [.. _held.Values];
            _held.Clear();
            _unfenced.Clear();
            _holders.Clear(); // a holder seen through a lost session is not known to hold any more
            foreach (var (_, done) in _releases.Concat(_inflightReleases))
            {
                done.TrySetResult(); // the lock goes with the session
            }

            _releases.Clear();
            _inflightReleases.Clear();
            _wantsChanged = true;
        }

        // Lost by the deadline: the children have until the deadline. Lost because the session broke: the server may
        // already have freed the locks, so no more than the stop timeout (and never past the deadline).
        var now = _time.GetTimestamp();
        var byStopTimeout = now + ToTimestampDelta(_options.StopTimeout);
        var escalateAt = !_clock.HasAck ? byStopTimeout
            : byDeadline ? _clock.DeadlineTimestamp
            : Math.Min(_clock.DeadlineTimestamp, byStopTimeout);
        foreach (var lease in lost)
        {
            lease.Lose(reason, escalateAt);
        }

        _guard.Poke();

        Volatile.Write(ref _backendPid, 0);
        return lost.Count > 0;
    }

    private void SetConnected(bool connected, string? reason)
    {
        if (IsConnected == connected && connected)
        {
            return;
        }

        IsConnected = connected;
        ConnectionChanged?.Invoke(reason);
    }

    private static void Retire(NpgsqlConnection? connection, Task? abandoned)
    {
        if (connection is null)
        {
            return;
        }

        // A round trip may be stuck (blackholed): then the connection is disposed once it fails on its own (command timeout).
        _ = DisposeAfterAsync(connection, abandoned ?? Task.CompletedTask);

        static async Task DisposeAfterAsync(NpgsqlConnection connection, Task abandoned)
        {
            try
            {
                await abandoned.ConfigureAwait(false);
            }
            catch
            {
                // The session is already given up; its stuck operation's error says nothing new.
            }

            try
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }
            catch
            {
            }
        }
    }

    private long ToTimestampDelta(TimeSpan span) => (long)(span.Ticks * (_time.TimestampFrequency / (double)TimeSpan.TicksPerSecond));

    private static string Describe(Exception ex) => ex switch
    {
        LeaseExpiringException => "the lease is about to expire: the server did not answer in time",
        PostgresException pg => $"{pg.SqlState}: {pg.MessageText}",
        NpgsqlException { InnerException: { } inner } npg => $"{npg.Message} ({inner.Message})",
        _ => ex.Message,
    };

    private sealed class Want(long key, string name)
    {
        public long Key { get; } = key;

        public string Name { get; } = name;

        public TaskCompletionSource<Lease> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public CancellationTokenRegistration Registration { get; set; }
    }

    private sealed class SessionIo
    {
        public Task? Abandoned { get; set; }
    }
}

/// <summary>The lease is about to expire: the server did not answer in time.</summary>
internal sealed class LeaseExpiringException() : Exception("The lease is about to expire: the server did not answer in time.");

/// <summary>The server cannot be used safely.</summary>
internal sealed class RefusedException(string message) : Exception(message);
