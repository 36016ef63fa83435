using System.Globalization;
using HighlanderPG.Diagnostics;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// The follower's accelerator: a second connection that watches every other node holding a lock this node wants, so
/// that this node learns within milliseconds when any of those holders' backends ends (crash, kill) or unlocks, instead
/// of at its next heartbeat.
/// </summary>
/// <remarks>
/// <para>
/// One statement per wait slice (<see cref="LeaseTimings.WaitSlice"/>), a PL/pgSQL block that runs on the server: it
/// takes one key of each distinct holder (<see cref="KeyLedger.WatchTargets"/>) in <em>shared</em> mode and gives it
/// back at once, so it never holds anything that would keep the exclusive lock from a lock session. It blocks on the
/// key of the holder with the most keys (woken the moment that holder's lock is freed) and, with several holders,
/// looks at the others every <see cref="PollInterval"/>; it returns the first key it found freed. Its lock waits end
/// by <c>lock_timeout</c> inside an exception block, so an idle follower makes the server log no error; a blocked
/// lock wait holds a snapshot (which holds back VACUUM), hence the slices. The lock session's heartbeat skips the keys
/// whose holder is watched (every <see cref="KeyLedger.HeartbeatsPerFullTry"/>th heartbeat tries them all, the
/// backstop). See docs/lease-protocol.md, "The follower waiter".
/// </para>
/// </remarks>
internal sealed class LockWaiter(HighlanderOptions options, LeaseTimings timings, NpgsqlDataSource dataSource, LockSession session, TimeProvider time, ILogger logger)
{
    /// <summary>How often the waiter looks at the holders it does not block on.</summary>
    public static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(20);

    /// <summary>
    /// The watch, run by the server. Its parameters come from session settings set in the same batch (a DO block takes
    /// none): the keys (comma-separated), the slice and the poll interval in milliseconds; it leaves the freed key in
    /// <c>highlander.watch_freed</c> (empty when the slice ended with every holder still there).
    /// </summary>
    internal const string WatchBlock = """
        DO $watch$
        DECLARE
            keys    bigint[] := string_to_array(current_setting('highlander.watch_keys'), ',')::bigint[];
            ends    timestamptz := clock_timestamp() + make_interval(secs => current_setting('highlander.watch_slice_ms')::float8 / 1000);
            poll    int := current_setting('highlander.watch_poll_ms')::int;
            k       bigint;
            left_ms int;
        BEGIN
            LOOP
                FOREACH k IN ARRAY keys LOOP
                    IF pg_try_advisory_lock_shared(k) THEN
                        PERFORM pg_advisory_unlock_shared(k);
                        PERFORM set_config('highlander.watch_freed', k::text, false);
                        RETURN;
                    END IF;
                END LOOP;
                left_ms := ceil(extract(epoch FROM ends - clock_timestamp()) * 1000)::int;
                EXIT WHEN left_ms <= 0;
                IF cardinality(keys) > 1 THEN
                    left_ms := least(left_ms, poll);
                END IF;
                PERFORM set_config('lock_timeout', left_ms::text, true);
                BEGIN
                    PERFORM pg_advisory_lock_shared(keys[1]);
                    PERFORM pg_advisory_unlock_shared(keys[1]);
                    PERFORM set_config('highlander.watch_freed', keys[1]::text, false);
                    RETURN;
                EXCEPTION WHEN lock_not_available THEN
                    -- lock_timeout may fire in the instant the lock is granted: never keep a shared lock.
                    PERFORM pg_advisory_unlock_all();
                END;
            END LOOP;
        END
        $watch$
        """;

    private readonly SemaphoreSlim _changed = new(0, 1);

    public async Task RunAsync(CancellationToken stopping)
    {
        session.WantsChanged += Signal;
        var backoff = new Backoff(options.ReconnectMinDelay, options.ReconnectMaxDelay);
        try
        {
            try
            {
                await WarmUpAsync(stopping).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested)
            {
                return;
            }

            while (!stopping.IsCancellationRequested)
            {
                try
                {
                    await WaitUntilTargetsAsync(stopping).ConfigureAwait(false);
                    await using var connection = await dataSource.OpenConnectionAsync(stopping).ConfigureAwait(false);
                    backoff.Reset();
                    await ServeAsync(connection, stopping).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (stopping.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception ex)
                {
                    // Until it is back, the lock session's heartbeats try every wanted key again.
                    session.SetWatched(null);
                    Log.WaiterError(logger, ex);

                    // A multi-host data source remembers each host's state (primary, standby, offline) for a while: after
                    // a failover the next open must look again, or it would skip the promoted standby until then.
                    if (dataSource is NpgsqlMultiHostDataSource multiHost)
                    {
                        multiHost.ClearDatabaseStates();
                    }

                    try
                    {
                        await Task.Delay(backoff.Next(), time, stopping).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            }
        }
        finally
        {
            session.SetWatched(null);
            session.WantsChanged -= Signal;
        }
    }

    private void Signal()
    {
        try
        {
            _changed.Release();
        }
        catch (SemaphoreFullException)
        {
        }
    }

    private async Task WaitUntilTargetsAsync(CancellationToken stopping)
    {
        while (session.WatchTargets().Count == 0)
        {
            session.SetWatched(null);
            await _changed.WaitAsync(stopping).ConfigureAwait(false);
        }
    }

    private async Task ServeAsync(NpgsqlConnection connection, CancellationToken stopping)
    {
        while (!stopping.IsCancellationRequested)
        {
            var targets = session.WatchTargets();
            if (targets.Count == 0)
            {
                // Nothing to watch: give the session up rather than keep it idle. The server ends a session idle for longer
                // than the lease (idle_session_timeout), which would log a FATAL line and count as a waiter error. Not at
                // once: the targets usually go because this node just took over, and closing a connection then would
                // compete for the CPU with starting the child; kept for a moment (well within the lease), the session is
                // used again if targets come back meanwhile.
                session.SetWatched(null);
                if (await TargetsWithinAsync(IdleGrace(timings), stopping).ConfigureAwait(false))
                {
                    continue;
                }

                return;
            }

            // Stop watching when a holder appears that is not watched yet (WatchForChangeAsync).
            long? freed;
            using (var changed = CancellationTokenSource.CreateLinkedTokenSource(stopping))
            {
                var watch = WatchForChangeAsync(targets, changed);
                // The block ends its slice by the server's wall clock (and lock_timeout, also measured on it): a
                // backward step of that clock would keep it waiting as long, blind to the holders it only polls. This
                // node's monotonic clock cancels it soon after the slice instead (one 57014 in the server log then).
                using var overrun = time.CreateTimer(static state => CancelQuietly((CancellationTokenSource)state!), changed, timings.WaitSlice + OverrunAllowance(timings.WaitSlice), Timeout.InfiniteTimeSpan);
                session.SetWatched(targets.Select(t => t.HolderPid));
                try
                {
                    freed = await WatchOnceAsync(connection, targets, changed.Token).ConfigureAwait(false);
                }
                catch (PostgresException ex) when (ex.SqlState is PostgresErrorCodes.QueryCanceled && !stopping.IsCancellationRequested)
                {
                    freed = null;
                    await UnlockAllAsync(connection).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!stopping.IsCancellationRequested)
                {
                    freed = null;
                    await UnlockAllAsync(connection).ConfigureAwait(false);
                }
                finally
                {
                    await changed.CancelAsync().ConfigureAwait(false);
                    await watch.ConfigureAwait(false);
                }
            }

            if (freed is { } key)
            {
                // A holder is gone or unlocked: try now, and wait for that try to report the new holders (if any)
                // before choosing again, rather than spinning on a holder that is already gone. Not for ever: no try
                // follows when nothing is left to try (the key was one this node no longer wants, or every key is held
                // off or deferred by placement), and the holders may change meanwhile.
                session.HolderGone(key);
                await ChangedWithinAsync(IdleGrace(timings), stopping).ConfigureAwait(false);
            }
        }
    }

    /// <summary>How long a waiter with nothing to watch keeps its session before it gives it up: a second, or the wait slice when shorter.</summary>
    internal static TimeSpan IdleGrace(LeaseTimings timings) => timings.WaitSlice < TimeSpan.FromSeconds(1) ? timings.WaitSlice : TimeSpan.FromSeconds(1);

    /// <summary>
    /// Runs the two waits that follow a freed key (<see cref="ChangedWithinAsync"/>, then <see cref="TargetsWithinAsync"/>
    /// once this node has taken over) once now, each ending at once: their first run (compiling them and their async
    /// machinery, about a millisecond of CPU measured) would otherwise fall in the middle of a take-over, beside the new
    /// leader's start. A change signalled meanwhile may be taken by it: harmless, the loop reads the targets afresh.
    /// </summary>
    private async Task WarmUpAsync(CancellationToken stopping)
    {
        await ChangedWithinAsync(TimeSpan.Zero, stopping).ConfigureAwait(false);
        await TargetsWithinAsync(TimeSpan.Zero, stopping, waitAnyway: true).ConfigureAwait(false);
    }

    /// <summary>
    /// Whether there is something to watch again within <paramref name="grace"/> (on the node's clock), counted from now.
    /// <paramref name="waitAnyway"/>: wait for a change first even when there is something to watch (the warm-up).
    /// </summary>
    private async Task<bool> TargetsWithinAsync(TimeSpan grace, CancellationToken stopping, bool waitAnyway = false)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        using var timer = CancelAfter(cts, grace);
        try
        {
            while (waitAnyway || session.WatchTargets().Count == 0)
            {
                waitAnyway = false;
                await _changed.WaitAsync(cts.Token).ConfigureAwait(false);
            }

            return true;
        }
        catch (OperationCanceledException) when (!stopping.IsCancellationRequested)
        {
            return false;
        }
    }

    /// <summary>Waits until the session reports a change, at most <paramref name="within"/> (on the node's clock).</summary>
    private async Task ChangedWithinAsync(TimeSpan within, CancellationToken stopping)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        using var timer = CancelAfter(cts, within);
        try
        {
            await _changed.WaitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!stopping.IsCancellationRequested)
        {
            // Nothing reported within the grace: choose again from what the session knows now.
        }
    }

    /// <summary>
    /// Cancels <paramref name="cts"/> after <paramref name="delay"/> on the node's clock; a zero delay (the warm-up) on a
    /// thread-pool thread at once, whatever the clock (a test's clock may not move by itself), so that the wait begun
    /// meanwhile has usually been suspended first.
    /// </summary>
    private ITimer? CancelAfter(CancellationTokenSource cts, TimeSpan delay)
    {
        if (delay > TimeSpan.Zero)
        {
            return time.CreateTimer(static state => CancelQuietly((CancellationTokenSource)state!), cts, delay, Timeout.InfiniteTimeSpan);
        }

        ThreadPool.UnsafeQueueUserWorkItem(static state => CancelQuietly(state), cts, preferLocal: false);
        return null;
    }

    /// <summary>One wait slice on the server; returns the key found freed, or null when every holder is still there.</summary>
    private async Task<long?> WatchOnceAsync(NpgsqlConnection connection, List<(int HolderPid, long Key)> targets, CancellationToken cancellationToken)
    {
        var poll = PollInterval < timings.WaitSlice ? PollInterval : timings.WaitSlice;
        await using var batch = new NpgsqlBatch(connection);
        var settings = new NpgsqlBatchCommand(
            "SELECT set_config('highlander.watch_keys', $1, false), set_config('highlander.watch_slice_ms', $2, false), " +
            "set_config('highlander.watch_poll_ms', $3, false), set_config('highlander.watch_freed', '', false)");
        settings.Parameters.Add(new NpgsqlParameter<string> { TypedValue = string.Join(',', targets.Select(t => t.Key.ToString(CultureInfo.InvariantCulture))) });
        settings.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Milliseconds(timings.WaitSlice) });
        settings.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Milliseconds(poll) });
        batch.BatchCommands.Add(settings);
        batch.BatchCommands.Add(new NpgsqlBatchCommand(WatchBlock));
        batch.BatchCommands.Add(new NpgsqlBatchCommand("SELECT current_setting('highlander.watch_freed') AS freed"));

        string? freed = null;
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        do
        {
            var isResult = reader.FieldCount == 1 && reader.GetName(0) == "freed";
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                if (isResult)
                {
                    freed = reader.GetString(0);
                }
            }
        }
        while (await reader.NextResultAsync(cancellationToken).ConfigureAwait(false));

        return long.TryParse(freed, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var key) ? key : null;
    }

    private async Task WatchForChangeAsync(List<(int HolderPid, long Key)> watching, CancellationTokenSource cancelWait)
    {
        var watched = watching.ToHashSet();
        try
        {
            while (!cancelWait.IsCancellationRequested)
            {
                await _changed.WaitAsync(cancelWait.Token).ConfigureAwait(false);
                // Only a holder (or key) not watched yet ends the watch. One that is no longer a target goes on being
                // watched until the slice ends: its key is free (the watch returns it at once), taken by this node, or
                // held by someone else, and watching it costs nothing. Ending the watch then would cost more: a try that
                // failed right after a release (this waiter, woken by it, still held the key in shared mode) makes the
                // key's holder unknown, and a watch cancelled then never reports the key it just found free.
                if (!session.WatchTargets().All(watched.Contains))
                {
                    await cancelWait.CancelAsync().ConfigureAwait(false);
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>How long past its slice a watch may run before this node cancels it: half the slice, at least 250 ms.</summary>
    internal static TimeSpan OverrunAllowance(TimeSpan slice) => slice / 2 > TimeSpan.FromMilliseconds(250) ? slice / 2 : TimeSpan.FromMilliseconds(250);

    private static void CancelQuietly(CancellationTokenSource cts)
    {
        try
        {
            cts.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The watch ended (and disposed its source) as the timer fired.
        }
    }

    private static string Milliseconds(TimeSpan span) => Math.Max(1, (long)Math.Ceiling(span.TotalMilliseconds)).ToString(CultureInfo.InvariantCulture);

    private static async Task UnlockAllAsync(NpgsqlConnection connection)
    {
        // A cancel may land between taking a key and giving it back: never keep a shared lock that would block the holder-to-be.
        await using var cmd = new NpgsqlCommand("SELECT pg_advisory_unlock_all()", connection);
        await cmd.ExecuteNonQueryAsync(CancellationToken.None).ConfigureAwait(false);
    }
}
