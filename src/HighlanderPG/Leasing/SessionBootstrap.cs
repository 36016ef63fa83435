using System.Globalization;
using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>What a new lock session learned while it was set up.</summary>
/// <param name="Connection">The open, dedicated connection (the caller owns it).</param>
/// <param name="BackendPid">The server's backend pid of the session.</param>
/// <param name="Version">The server's version, for logs.</param>
/// <param name="ServerUptime">How long the server had been up (since its start or last reinitialisation).</param>
/// <param name="LockDelayRemaining">How long from now no lock may be taken (<see cref="LockDelay"/>); zero or less: none.</param>
/// <param name="ServerTime">The server's clock, read by the session's first statement (<see cref="ServerClock"/>).</param>
/// <param name="ServerChange">
/// How the server differs from the one of the node's previous session when it is another server (another cluster, a
/// promoted standby, another address), which <see cref="LockDelayRemaining"/> then covers (logged as event 1010);
/// <see langword="null"/> for the same server, a restart in place (logged as a lock-delay after a restart) or a first session.
/// </param>
internal sealed record SessionStart(NpgsqlConnection Connection, int BackendPid, string Version, TimeSpan ServerUptime, TimeSpan LockDelayRemaining, DateTime ServerTime, string? ServerChange = null)
{
    /// <summary>This node's hold-offs when the session started (docs/lease-protocol.md, "Step down and drain").</summary>
    public HoldOffSet HoldOffs { get; init; } = HoldOffSet.None;
}

/// <summary>
/// Opens a lock session: connects, refuses a server that cannot be used safely (<see cref="ServerChecks"/>), sets the
/// server-side lease (<c>idle_session_timeout</c>, from <see cref="LeaseTimings"/>), creates the fencing table when
/// fencing is on, listens for release announcements, and computes the lock-delay after a server (re)start, a promotion
/// or a move to another server (<see cref="ServerIdentity"/>; docs/lease-protocol.md, "Lock-delay after a failover").
/// </summary>
internal sealed class SessionBootstrap(HighlanderOptions options, LeaseTimings timings, NpgsqlDataSource dataSource, int singletons, ILogger logger)
{
    /// <summary>The server of this node's last accepted session (one bootstrap per lock session, whose loop is sequential).</summary>
    private ServerIdentity? _previous;
    private bool _partialIdentityLogged;

    /// <summary>
    /// Opens and prepares the session. On any failure the connection is disposed and the error thrown
    /// (<see cref="RefusedException"/> when the server must not be used).
    /// </summary>
    /// <param name="onNotification">Called with each notification's payload on <see cref="LockProtocol.Channel"/>.</param>
    /// <param name="sinceCrashSeen">How long ago this node saw the server reinitialise after a backend crash, if it did.</param>
    /// <param name="stopping">Fires when the node stops.</param>
    /// <param name="onControl">Called with each notification's payload on the control channel (<see cref="ControlSql.Channel"/>).</param>
    public async Task<SessionStart> OpenAsync(Action<string> onNotification, Func<TimeSpan?> sinceCrashSeen, CancellationToken stopping, Action<string>? onControl = null)
    {
        NpgsqlConnection connection;
        try
        {
            connection = await dataSource.OpenConnectionAsync(stopping).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            ForgetHostStates();
            throw;
        }

        try
        {
            int pid;
            bool inRecovery;
            int versionNum;
            double uptimeSeconds;
            string version;
            int maxLocks, maxConnections, maxPrepared;
            DateTime serverTime;
            await using (var cmd = new NpgsqlCommand(
                "SELECT pg_backend_pid(), pg_is_in_recovery(), current_setting('server_version_num')::int, " +
                // The server's (re)start: the postmaster's start, or a later reinitialisation after a backend crash, which
                // shows as the checkpointer's start, and a promotion as the walwriter's, which does not run during recovery
                // (both visible with pg_read_all_stats or as superuser; otherwise null).
                "extract(epoch from clock_timestamp() - GREATEST(pg_postmaster_start_time(), " +
                "(SELECT max(backend_start) FROM pg_stat_activity WHERE backend_type IN ('checkpointer', 'walwriter'))))::float8, current_setting('server_version'), " +
                // The shared lock table's size (ServerChecks.CheckLockCapacity).
                "current_setting('max_locks_per_transaction')::int, current_setting('max_connections')::int, current_setting('max_prepared_transactions')::int, " +
                // The server's clock (ServerClock: a forward step frees idle sessions' locks early).
                "clock_timestamp()",
                connection))
            await using (var reader = await cmd.ExecuteReaderAsync(stopping).ConfigureAwait(false))
            {
                await reader.ReadAsync(stopping).ConfigureAwait(false);
                pid = reader.GetInt32(0);
                inRecovery = reader.GetBoolean(1);
                versionNum = reader.GetInt32(2);
                uptimeSeconds = reader.GetDouble(3);
                version = reader.GetString(4);
                maxLocks = reader.GetInt32(5);
                maxConnections = reader.GetInt32(6);
                maxPrepared = reader.GetInt32(7);
                serverTime = reader.GetDateTime(8);
            }

            var refusal = ServerChecks.Check(versionNum, version, inRecovery, pid, connection.ProcessID, options)
                ?? ServerChecks.CheckLockCapacity(singletons, maxLocks, maxConnections, maxPrepared);
            if (refusal is not null)
            {
                if (inRecovery)
                {
                    // A multi-host data source remembers which host is a standby for a while: ask again next time.
                    ForgetHostStates();
                }

                throw new RefusedException(refusal);
            }

            if (pid != connection.ProcessID)
            {
                Log.SessionPooler(logger, pid, connection.ProcessID);
            }

            await SetServerTimeoutsAsync(connection, versionNum, version, stopping).ConfigureAwait(false);
            if (options.Fencing)
            {
                await FencingSql.EnsureCreatedAsync(connection, options.FencingSchema, stopping).ConfigureAwait(false);
            }

            var control = ControlSql.Channel(options.FencingSchema);
            connection.Notification += (_, e) =>
            {
                if (e.Channel == control)
                {
                    onControl?.Invoke(e.Payload);
                }
                else
                {
                    onNotification(e.Payload);
                }
            };
            await LockProtocol.ListenAsync(connection, stopping).ConfigureAwait(false);
            var holdOffs = await ControlSession.StartAsync(connection, options, logger, stopping).ConfigureAwait(false);

            var (identity, partial) = await ServerIdentity.ReadAsync(connection, stopping).ConfigureAwait(false);
            if (partial is not null && !_partialIdentityLogged)
            {
                _partialIdentityLogged = true;
                Log.ServerIdentityPartial(logger, partial);
            }

            var uptime = TimeSpan.FromSeconds(uptimeSeconds);
            var lockDelay = LockDelay.Remaining(timings.LockDelay, uptime, sinceCrashSeen());
            var change = ServerIdentity.Change(_previous, identity);
            string? serverChange = null;
            if (change is not null)
            {
                // Holders on the previous server may run their children until their deadlines, up to the lease after
                // their last answer from it, which came before this node reached this server: the lock-delay from now.
                lockDelay = lockDelay > timings.LockDelay ? lockDelay : timings.LockDelay;
                if (!ServerIdentity.IsRestartInPlace(_previous!, identity))
                {
                    serverChange = change;
                    Log.ServerChanged(logger, change, _previous!.ToString(), identity.ToString(), lockDelay);
                }
            }

            _previous = identity;
            return new SessionStart(connection, pid, version, uptime, lockDelay, serverTime, serverChange) { HoldOffs = holdOffs };
        }
        catch
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Makes a multi-host data source probe every host again at the next open: it remembers a host's state (primary,
    /// standby, offline) for <c>Host Recheck Seconds</c>, and a standby promoted meanwhile would be skipped until then.
    /// </summary>
    private void ForgetHostStates()
    {
        if (dataSource is NpgsqlMultiHostDataSource multiHost)
        {
            multiHost.ClearDatabaseStates();
        }
    }

    private async Task SetServerTimeoutsAsync(NpgsqlConnection connection, int versionNum, string version, CancellationToken stopping)
    {
        await using var cmd = new NpgsqlCommand(null, connection);
        var idleMs = timings.IdleSessionTimeoutMilliseconds.ToString(CultureInfo.InvariantCulture);
        if (versionNum >= ServerChecks.MinimumVersionNum)
        {
            // The server-side lease: the server ends this session, freeing its locks, after this long without a message.
            // https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-IDLE-SESSION-TIMEOUT
            // idle_in_transaction_session_timeout too: the fencing bump runs in a short transaction, and a session
            // cut off inside it would otherwise not be "idle" for idle_session_timeout.
            // plan_cache_mode: the session's statements are few, simple and prepared (Npgsql's automatic preparation);
            // by default the server plans each one afresh for its first five runs, and a follower's try may well be
            // among those at a take-over (measured: about half a millisecond of planning, on the way to the child's
            // start). A generic plan is made once, at the first run (in the rehearsal), and reused.
            cmd.CommandText = "SELECT set_config('idle_session_timeout', $1, false), set_config('idle_in_transaction_session_timeout', $1, false), set_config('plan_cache_mode', 'force_generic_plan', false)";
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = idleMs });
        }
        else
        {
            Log.WeakerMode(logger, version);
            // Whole seconds only: rounded so that the server never drops a client before the lease.
            cmd.CommandText = "SELECT set_config('tcp_keepalives_idle', $1, false), set_config('tcp_keepalives_interval', '1', false), set_config('tcp_keepalives_count', $2, false), set_config('idle_in_transaction_session_timeout', $3, false)";
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = timings.KeepalivesIdleSeconds.ToString(CultureInfo.InvariantCulture) });
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = timings.KeepalivesCount.ToString(CultureInfo.InvariantCulture) });
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = idleMs });
        }

        await cmd.ExecuteNonQueryAsync(stopping).ConfigureAwait(false);
    }
}
