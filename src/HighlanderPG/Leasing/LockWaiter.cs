using System.Globalization;
using HighlanderPG.Diagnostics;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// The follower's accelerator: a second connection that blocks on a lock held by another node, so that this node
/// learns within milliseconds when that holder's backend ends (crash, kill) or unlocks, instead of at its next heartbeat.
/// </summary>
/// <remarks>
/// It asks for the <em>shared</em> lock and releases it in the same statement, so it never holds anything that would keep
/// the exclusive lock from the lock session. A blocked lock wait holds a snapshot (which holds back VACUUM), so each wait
/// is bounded by <c>lock_timeout</c> (<see cref="LeaseTimings.WaitSlice"/>); <c>pg_advisory_unlock_all()</c> after a
/// failed wait undoes a lock granted in the same instant that <c>lock_timeout</c> fired. With holders on several nodes,
/// it watches them in turn; the lock session's heartbeat retries every wanted lock as the backstop.
/// </remarks>
internal sealed class LockWaiter(HighlanderOptions options, LeaseTimings timings, NpgsqlDataSource dataSource, LockSession session, TimeProvider time, ILogger logger)
{
    private readonly SemaphoreSlim _changed = new(0, 1);
    private int _rotation;

    public async Task RunAsync(CancellationToken stopping)
    {
        session.WantsChanged += Signal;
        var backoff = new Backoff(options.ReconnectMinDelay, options.ReconnectMaxDelay);
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                try
                {
                    await WaitUntilTargetsAsync(stopping).ConfigureAwait(false);
                    await using var connection = await dataSource.OpenConnectionAsync(stopping).ConfigureAwait(false);
                    await using (var set = new NpgsqlCommand("SELECT set_config('lock_timeout', $1, false)", connection))
                    {
                        set.Parameters.Add(new NpgsqlParameter<string> { TypedValue = ((long)timings.WaitSlice.TotalMilliseconds).ToString(CultureInfo.InvariantCulture) });
                        await set.ExecuteNonQueryAsync(stopping).ConfigureAwait(false);
                    }

                    backoff.Reset();
                    await ServeAsync(connection, stopping).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (stopping.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception ex)
                {
                    Log.WaiterError(logger, ex);
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
        while (PickTarget() is null)
        {
            await _changed.WaitAsync(stopping).ConfigureAwait(false);
        }
    }

    /// <summary>A wanted key with a known holder (another backend), rotating over distinct holders.</summary>
    private long? PickTarget()
    {
        var targets = session.GetWaitTargets().Where(t => t.HolderPid is not null).ToList();
        if (targets.Count == 0)
        {
            return null;
        }

        var byHolder = targets.GroupBy(t => t.HolderPid).Select(g => g.First().Key).ToList();
        _rotation = (_rotation + 1) % byHolder.Count;
        return byHolder[_rotation];
    }

    private async Task ServeAsync(NpgsqlConnection connection, CancellationToken stopping)
    {
        while (!stopping.IsCancellationRequested)
        {
            var target = PickTarget();
            if (target is null)
            {
                await _changed.WaitAsync(stopping).ConfigureAwait(false);
                continue;
            }

            // Stop waiting on this key when the wanted set changes (e.g. this node took it through a notification).
            bool freed;
            using (var changed = CancellationTokenSource.CreateLinkedTokenSource(stopping))
            {
                var watch = WatchForChangeAsync(target.Value, changed);
                try
                {
                    await using var cmd = new NpgsqlCommand("SELECT pg_advisory_lock_shared($1), pg_advisory_unlock_shared($1)", connection);
                    cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = target.Value });
                    await cmd.ExecuteNonQueryAsync(changed.Token).ConfigureAwait(false);
                    freed = true;
                }
                catch (PostgresException ex) when (ex.SqlState is PostgresErrorCodes.LockNotAvailable or PostgresErrorCodes.QueryCanceled)
                {
                    freed = false;
                    await UnlockAllAsync(connection).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!stopping.IsCancellationRequested)
                {
                    freed = false;
                    await UnlockAllAsync(connection).ConfigureAwait(false);
                }
                finally
                {
                    await changed.CancelAsync().ConfigureAwait(false);
                    await watch.ConfigureAwait(false);
                }
            }

            if (freed)
            {
                // The holder is gone or unlocked: try now, and wait for that try to report the new holder (if any)
                // before choosing again, rather than spinning on a holder that is already gone.
                session.Poke();
                await _changed.WaitAsync(stopping).ConfigureAwait(false);
            }
        }
    }

    private async Task WatchForChangeAsync(long key, CancellationTokenSource cancelWait)
    {
        try
        {
            while (!cancelWait.IsCancellationRequested)
            {
                await _changed.WaitAsync(cancelWait.Token).ConfigureAwait(false);
                if (!session.GetWaitTargets().Any(t => t.Key == key && t.HolderPid is not null))
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

    private static async Task UnlockAllAsync(NpgsqlConnection connection)
    {
        // lock_timeout may fire in the instant the lock is granted; never keep a shared lock that would block the holder-to-be.
        await using var cmd = new NpgsqlCommand("SELECT pg_advisory_unlock_all()", connection);
        await cmd.ExecuteNonQueryAsync(CancellationToken.None).ConfigureAwait(false);
    }
}
