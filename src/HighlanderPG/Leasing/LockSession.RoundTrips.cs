using System.Globalization;
using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using HighlanderPG.Placement;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>One session's service: its round trips (each bounded by the lease's stop point) and its waits between them.</summary>
internal sealed partial class LockSession
{
    private async Task ServeAsync(NpgsqlConnection connection, SessionIo session, CancellationToken stopping)
    {
        var nextHeartbeat = _time.GetTimestamp() + Delta(_timings.Heartbeat);
        while (!stopping.IsCancellationRequested)
        {
            if (_expired || _clock.MustStop)
            {
                throw new LeaseExpiringException();
            }

            if (await ControlTurnAsync(connection, session).ConfigureAwait(false))
            {
                continue;
            }

            var now = _time.GetTimestamp();
            if (MembersDue(now))
            {
                // Spread placement: the members first (a holder gone may have taken a member with it), then the try.
                nextHeartbeat = await RefreshMembersAsync(connection, session).ConfigureAwait(false);
                continue;
            }

            if (Spread)
            {
                _ledger.EndGraces(now);
            }

            var heartbeatDue = now >= nextHeartbeat;
            var (releases, toTry) = _ledger.TakeWork(heartbeatDue, now >= _lockDelayUntil, now);
            if (releases.Count > 0)
            {
                nextHeartbeat = await ReleaseBatchAsync(connection, session, releases).ConfigureAwait(false);
                continue;
            }

            // The placement may defer every key (spread: at its share); then nothing is sent and the loop goes on.
            if (toTry.Length > 0 && PlanTries(toTry) is { } plan)
            {
                nextHeartbeat = await TryAcquireAsync(connection, session, plan).ConfigureAwait(false);
                continue;
            }

            if (_holderQueryPending && now >= _nextHolderQuery)
            {
                var unknown = _ledger.NeedHolder();
                _holderQueryPending = false;
                if (unknown.Length > 0)
                {
                    await AskHoldersAsync(connection, session, unknown).ConfigureAwait(false);
                    continue;
                }
            }

            if (_ledger.UnfencedDue(now) is { Length: > 0 } unfenced)
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
        if (_ledger.AnyWants && _lockDelayUntil > _time.GetTimestamp())
        {
            until = Math.Min(until, _lockDelayUntil);
        }

        until = Math.Min(until, _ledger.NextUnfenced);
        until = Math.Min(until, _ledger.GatheringUntil);
        until = Math.Min(until, PlacementWakeAt());
        if (_holderQueryPending)
        {
            until = Math.Min(until, _nextHolderQuery);
        }

        var timeout = _time.GetElapsedTime(_time.GetTimestamp(), until);
        if (timeout <= TimeSpan.Zero)
        {
            return;
        }

        var cts = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        lock (_wakeGate)
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
            // The wait's end comes from the node's TimeProvider (not CancelAfter's own timer), like every other timeout.
            using var timer = _time.CreateTimer(static state => CancelQuietly((CancellationTokenSource)state!), cts, timeout, Timeout.InfiniteTimeSpan);
            await ConnectionWait.UntilNotifiedAsync(connection, cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            // Woken, timed out for the next heartbeat, or stopping: the connection stays usable.
        }
        finally
        {
            lock (_wakeGate)
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
        var (pid, serverTime) = await RoundTripAsync(session, () => LockProtocol.HeartbeatAsync(connection)).ConfigureAwait(false);
        CheckPid(pid);
        ObserveServerClock(serverTime, sent);
        return sent + Delta(_timings.Heartbeat);
    }

    private async Task<long> TryAcquireAsync(NpgsqlConnection connection, SessionIo session, TryPlan plan)
    {
        var sent = _time.GetTimestamp();
        var notAfter = _serverClock.Bound(sent);
        var result = await RoundTripAsync(session, () => LockProtocol.TryLockAsync(connection, plan.All, plan.Limited, plan.Limit, notAfter, CheckPid)).ConfigureAwait(false);
        if (result.Refused)
        {
            // Nothing was taken: the server's clock read past the bound. A forward step, or only a statement that
            // reached the server late (a stalled server, a retransmission)? Its reading cannot tell; a quick second
            // reading, compared with the one before the try, can.
            await ProbeServerClockAsync(connection, session).ConfigureAwait(false);
            _ledger.Poke();
            WantsChanged?.Invoke();
            return sent + Delta(_timings.Heartbeat);
        }

        ObserveServerClock(result.ServerTime, sent);
        var got = result.Got;
        if (Spread)
        {
            _ledger.AfterTry(plan, got, _time.GetTimestamp(), Delta(_timings.SpreadGrace));
        }

        // Hand the acquired locks over first; who holds the others is asked afterwards, in a round trip of its own
        // (pg_locks is comparatively costly, and not needed to start a child). With fencing, the runner gets the lease once
        // its epoch is bumped (FenceAsync).
        Grant(_ledger.Taken(got, _options.Fencing, _time.GetUtcNow()));
        // Only the holders not known (or possibly changed) are asked: a key whose holder the waiter watches cannot have
        // changed hands unnoticed, so a follower's steady state never asks pg_locks (whose cost grows with every lock).
        // Never in the same breath as the try, and at most once per HolderQueryInterval: a try that failed after a
        // holder vanished lost a race, and the winner is starting its children right now; every loser scanning the
        // server's lock table and taking in a row per key at that moment would slow the take-over it just lost. A release of
        // many singletons may come in several notifications (300 keys each) or statements (spread hand-overs, children
        // that outlive a stop's gathering), and each makes every follower try again: the keys still unknown are asked
        // together, once, when the interval ends (ServeAsync).
        // A key found free by the last query but lost again (a waiter's momentary shared lock, most likely) is asked
        // about again later each time it happens (FreeRetryDelay).
        // After a lost race (a holder went, another node took its keys) the question waits longer (LostRaceHolderDelay):
        // with many singletons the winner is starting them on the same CPUs as every loser and the server, and the
        // answer is only needed to watch the new holder (a crash of it meanwhile is found by that question, or the
        // heartbeat's try) and to show it.
        // Plain loops, one pass under the ledger's lock: every loser of a race over a thousand keys runs this at the moment
        // the winner starts its children, on the same cores (LINQ's generic iterators over long were compiled right then).
        var failed = FailedKeys(plan, got);
        if (failed.Length > 0 && _ledger.AfterFailedTry(failed) is { NeedHolder: true } facts)
        {
            var delay = HolderQueryDelay(facts.FoundFreeStreak, facts.LostRace);
            _holderQueryPending = true;
            _nextHolderQuery = Math.Max(_nextHolderQuery, _time.GetTimestamp() + Delta(delay));
        }

        WantsChanged?.Invoke();
        return sent + Delta(_timings.Heartbeat);
    }

    /// <summary>The keys of <paramref name="plan"/> not in <paramref name="got"/>.</summary>
    private static long[] FailedKeys(TryPlan plan, List<long> got)
    {
        if (got.Count == plan.Count)
        {
            return [];
        }

        HashSet<long>? taken = got.Count == 0 ? null : [.. got];
        var failed = new long[plan.Count - got.Count];
        var n = 0;
        foreach (var part in (ReadOnlySpan<long[]>)[plan.All, plan.Limited])
        {
            foreach (var key in part)
            {
                if ((taken is null || !taken.Contains(key)) && n < failed.Length)
                {
                    failed[n++] = key;
                }
            }
        }

        return n == failed.Length ? failed : failed[..n];
    }

    /// <summary>How often at most a session asks who holds the keys it could not take (pg_locks).</summary>
    internal static readonly TimeSpan HolderQueryInterval = TimeSpan.FromMilliseconds(50);

    /// <summary>How long after a try that lost a race the session asks who won (see <see cref="TryAcquireAsync"/>).</summary>
    internal static readonly TimeSpan LostRaceHolderDelay = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// How long after a failed try the session asks who holds the keys it could not take: after a lost race (their known
    /// holder went, and another node took them), <see cref="LostRaceHolderDelay"/>; when holder queries found one of them
    /// free <paramref name="streak"/> times in a row, <see cref="FreeRetryDelay"/>; otherwise (e.g. at start, nobody
    /// known yet) <see cref="HolderQueryInterval"/>.
    /// </summary>
    internal static TimeSpan HolderQueryDelay(int streak, bool lostRace) =>
        streak == 0 && lostRace ? LostRaceHolderDelay : FreeRetryDelay(streak);

    /// <summary>The longest <see cref="FreeRetryDelay"/>: a key held only in shared mode for good is tried about once a second.</summary>
    internal static readonly TimeSpan MaxFreeRetryDelay = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How long after a failed try the session asks who holds the keys it could not take, when holder queries found one
    /// of them free <paramref name="streak"/> times in a row since it was last taken or seen held (each such query is
    /// followed by a try): <see cref="HolderQueryInterval"/>, doubled each time, at most <see cref="MaxFreeRetryDelay"/>.
    /// A key free but momentarily held in shared mode is so taken within milliseconds, and one held in shared mode by
    /// something else for good costs a try and a query a second, not a loop.
    /// </summary>
    internal static TimeSpan FreeRetryDelay(int streak)
    {
        var delay = HolderQueryInterval * Math.Pow(2, Math.Min(streak, 10));
        return delay < MaxFreeRetryDelay ? delay : MaxFreeRetryDelay;
    }

    private async Task AskHoldersAsync(NpgsqlConnection connection, SessionIo session, long[] keys)
    {
        _holderQueryPending = false;
        _nextHolderQuery = _time.GetTimestamp() + Delta(HolderQueryInterval);
        await UpdateHoldersAsync(connection, session, keys).ConfigureAwait(false);
        WantsChanged?.Invoke();
    }

    /// <summary>Records a reading of the server's clock; when it stepped forward, starts the lock-delay (<see cref="ServerClock"/>).</summary>
    private void ObserveServerClock(DateTime serverTime, long sent)
    {
        var ahead = _serverClock.Observe(serverTime, sent, _time.GetTimestamp());
        if (ahead > _serverClock.Tolerance)
        {
            StartClockStepDelay(ahead.Value);
        }
    }

    /// <summary>
    /// After a refused try: reads the server's clock again and compares it with the reading from before the try. Ahead
    /// by more than the tolerance: the clock stepped forward, and the lock-delay starts. Not ahead, read in a quick round
    /// trip (under half the tolerance): the try only came late, and the next one goes at once. A slow reading proves
    /// nothing (a step could hide in its round trip): it is read again, up to <see cref="ClockProbes"/> times, and if
    /// none is quick the lock-delay starts too (a step must never be taken for a late statement; the opposite costs
    /// only time).
    /// </summary>
    private async Task ProbeServerClockAsync(NpgsqlConnection connection, SessionIo session)
    {
        TimeSpan? ahead = null;
        for (var probe = 0; probe < ClockProbes; probe++)
        {
            var sent = _time.GetTimestamp();
            var (pid, serverTime) = await RoundTripAsync(session, () => LockProtocol.HeartbeatAsync(connection)).ConfigureAwait(false);
            CheckPid(pid);
            var received = _time.GetTimestamp();
            ahead = _serverClock.Ahead(serverTime, received);
            var quick = _time.GetElapsedTime(sent, received) <= _serverClock.Tolerance / 2;
            if (ahead > _serverClock.Tolerance || quick || probe == ClockProbes - 1)
            {
                _serverClock.Observe(serverTime, sent, received);
                if (ahead > _serverClock.Tolerance || !quick)
                {
                    StartClockStepDelay(ahead is { } a && a > TimeSpan.Zero ? a : TimeSpan.Zero);
                }

                return;
            }
        }
    }

    /// <summary>How many readings of the server's clock a refused try may take to find a quick one.</summary>
    private const int ClockProbes = 3;

    private void StartClockStepDelay(TimeSpan ahead)
    {
        var until = _time.GetTimestamp() + Delta(_timings.LockDelay);
        if (until > _lockDelayUntil)
        {
            _lockDelayUntil = until;
        }

        Log.ServerClockStepped(_logger, ahead, _timings.LockDelay);
    }

    /// <summary>Learns who holds the keys this node could not take (for status, events and the follower waiter).</summary>
    private async Task UpdateHoldersAsync(NpgsqlConnection connection, SessionIo session, long[] keys)
    {
        var holders = await RoundTripAsync(session, () => LockProtocol.HoldersAsync(connection, keys, _backendPid)).ConfigureAwait(false);
        foreach (var (key, holder) in _ledger.UpdateHolders(keys, holders))
        {
            _observers.HolderChanged(key, holder);
        }
    }

    /// <summary>
    /// Bumps the fencing epochs of newly acquired keys (<see cref="EpochBumper"/>), then hands each lease to its runner:
    /// one key alone, or many at once in one transaction (a take-over of many singletons costs two round trips, not one
    /// per key). A bump that finds the row held by an old leader's guarded transaction is retried shortly; other keys go
    /// on meanwhile. An error of the bump itself (e.g. no privilege) fails those acquisitions only, not the session.
    /// </summary>
    private async Task<long> FenceAsync(NpgsqlConnection connection, SessionIo session, long[] due)
    {
        var sent = _time.GetTimestamp();
        var candidates = _ledger.TakeFenceCandidates(due);
        if (candidates.Count == 0)
        {
            return _time.GetTimestamp();
        }

        if (candidates.Count > 1)
        {
            // A take-over of many: one transaction for all, not a round trip per key.
            BatchBump batch;
            try
            {
                batch = await RoundTripAsync(session, () => EpochBumper.BumpManyAsync(connection, _options, candidates)).ConfigureAwait(false);
            }
            catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.LockNotAvailable)
            {
                var later = _time.GetTimestamp() + Delta(EpochBumper.RetryDelay);
                foreach (var (key, _) in candidates)
                {
                    _ledger.FenceDeferred(key, later);
                }

                return sent + Delta(_timings.Heartbeat);
            }
            catch (PostgresException ex) when (ex.InvariantSeverity is "ERROR" && connection.State == System.Data.ConnectionState.Open)
            {
                foreach (var (key, name) in candidates)
                {
                    FailFence(key, name, ex);
                }

                return sent + Delta(_timings.Heartbeat);
            }

            foreach (var (key, epoch) in batch.Epochs)
            {
                Grant(_ledger.Fenced(key, epoch));
            }

            var retryAt = _time.GetTimestamp() + Delta(EpochBumper.RetryDelay);
            foreach (var key in batch.Busy)
            {
                _ledger.FenceDeferred(key, retryAt);
            }

            foreach (var (key, name) in batch.Movers)
            {
                await BumpOneAsync(connection, session, key, name).ConfigureAwait(false);
            }

            return sent + Delta(_timings.Heartbeat);
        }

        await BumpOneAsync(connection, session, candidates[0].Key, candidates[0].Name).ConfigureAwait(false);
        return sent + Delta(_timings.Heartbeat);
    }

    private async Task BumpOneAsync(NpgsqlConnection connection, SessionIo session, long key, string name)
    {
        long epoch;
        try
        {
            epoch = await RoundTripAsync(session, () => EpochBumper.BumpAsync(connection, _options, key, name)).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.LockNotAvailable)
        {
            _ledger.FenceDeferred(key, _time.GetTimestamp() + Delta(EpochBumper.RetryDelay));
            return;
        }
        catch (PostgresException ex) when (ex.InvariantSeverity is "ERROR" && connection.State == System.Data.ConnectionState.Open)
        {
            FailFence(key, name, ex);
            return;
        }

        Grant(_ledger.Fenced(key, epoch));
    }

    private void FailFence(long key, string name, PostgresException ex)
    {
        var failed = _ledger.FenceFailed(key);
        failed?.Registration.Dispose();
        failed?.Done.TrySetException(new InvalidOperationException(EpochBumper.DescribeFailure(_options, name, ex), ex));
    }

    private void Grant(List<(KeyLedger.Want Want, Lease Lease)> granted)
    {
        foreach (var (want, lease) in granted)
        {
            want.Registration.Dispose();
            if (!want.Done.TrySetResult(lease))
            {
                _ledger.QueueOrphanRelease(lease);
                Wake();
            }
        }
    }

    private async Task<long> ReleaseBatchAsync(NpgsqlConnection connection, SessionIo session, List<(Lease Lease, TaskCompletionSource Done)> releases)
    {
        var sent = _time.GetTimestamp();
        var keys = releases.Select(r => r.Lease.Key).ToArray();
        await RoundTripAsync(session, () =>
        {
            var unlocking = LockProtocol.UnlockAndNotifyAsync(connection, keys);
            ReleasesSent?.Invoke(keys); // the statement is on its way (written before its answer is awaited)
            return unlocking;
        }).ConfigureAwait(false);
        _ledger.Released(releases);
        foreach (var (lease, done) in releases)
        {
            lease.Lose("released", _time.GetTimestamp());
            done.TrySetResult();
        }

        return sent + Delta(_timings.Heartbeat);
    }

    /// <summary>
    /// Awaits one round trip, but never past the point where children must stop: if the server does not answer
    /// by then, the operation is abandoned (left to fail on its own) and the session is given up.
    /// See docs/lease-protocol.md, "The client-side deadline".
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
        foreach (var key in LockProtocol.ParseAnnouncement(payload))
        {
            _ledger.OnReleaseAnnounced(key);
        }
    }

    private static void CancelQuietly(CancellationTokenSource cts)
    {
        try
        {
            cts.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The wait ended (and disposed its source) as the timer fired.
        }
    }
}
