using Npgsql;

namespace HighlanderPG.Fencing;

/// <summary>
/// Bumps a singleton's fencing epoch for a new acquisition, in its own short durable transaction on the lock session's
/// connection. A guarded transaction of the old leader holds the row <c>FOR SHARE</c>; the bump waits for it, bounded by a
/// short <c>lock_timeout</c> (<c>55P03</c> then: the caller retries soon) so that the session never blocks for long (its
/// heartbeat keeps the lease). The bump cannot be starved: once the old holder's session has ended, the guard refuses
/// new guarded transactions before they take the row, and the ones in flight are bounded (each may stay idle at most
/// the lease: the guard sets <c>idle_in_transaction_session_timeout</c>). See docs/lease-protocol.md, "Fencing".
/// </summary>
internal static class EpochBumper
{
    /// <summary>How long one bump may wait for an old leader's guarded transaction, in milliseconds.</summary>
    private const string LockTimeoutMilliseconds = "100";

    /// <summary>
    /// The retry delay after a bump found the row held (<c>55P03</c>): short, so that the bump lands soon after the last
    /// guarded transaction in flight ends (new ones of a dead holder no longer take the row).
    /// </summary>
    public static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// Moves the name to <paramref name="key"/> if it was stored under another key, bumps the epoch and commits; returns
    /// the new epoch. One round trip: the settings and the bump go as one batch, which the server runs as one (implicit)
    /// transaction, committed at its end; the epoch is returned only once that commit is confirmed.
    /// </summary>
    public static async Task<long> BumpAsync(NpgsqlConnection connection, HighlanderOptions options, long key, string name)
    {
        await using var batch = new NpgsqlBatch(connection);
        var settings = new NpgsqlBatchCommand("SELECT set_config('lock_timeout', $1, true), set_config('synchronous_commit', 'on', true)");
        settings.Parameters.Add(new NpgsqlParameter<string> { TypedValue = LockTimeoutMilliseconds });
        batch.BatchCommands.Add(settings);
        var bump = new NpgsqlBatchCommand(FencingSql.MoveAndBump(options.FencingSchema));
        AddBumpParameters(bump.Parameters, options, key, name);
        batch.BatchCommands.Add(bump);

        await using var reader = await batch.ExecuteReaderAsync().ConfigureAwait(false);
        await reader.NextResultAsync().ConfigureAwait(false);
        await reader.ReadAsync().ConfigureAwait(false);
        var epoch = reader.GetInt64(0);
        // The server commits at the batch's end: reading on to its end surfaces a failed commit before the epoch is used.
        await reader.CloseAsync().ConfigureAwait(false);
        return epoch;
    }

    /// <summary>
    /// Bumps many newly acquired keys in one transaction and two round trips (after a take-over of many singletons):
    /// rows held by an old leader's guarded transaction are skipped (<c>FOR UPDATE SKIP LOCKED</c>: returned as busy, for
    /// a retry), and names stored under another key (a moved name) are left to <see cref="BumpAsync"/> (returned as
    /// movers). Returns the new epoch of every other key.
    /// </summary>
    public static async Task<BatchBump> BumpManyAsync(NpgsqlConnection connection, HighlanderOptions options, IReadOnlyList<(long Key, string Name)> candidates)
    {
        var schema = options.FencingSchema;
        var keys = candidates.Select(c => c.Key).ToArray();
        var existing = new HashSet<long>();
        var free = new HashSet<long>();
        var movers = new HashSet<long>();
        await using var tx = await connection.BeginTransactionAsync().ConfigureAwait(false);
        await using (var look = new NpgsqlBatch(connection, tx))
        {
            var settings = new NpgsqlBatchCommand("SELECT set_config('lock_timeout', $1, true), set_config('synchronous_commit', 'on', true)");
            settings.Parameters.Add(new NpgsqlParameter<string> { TypedValue = LockTimeoutMilliseconds });
            look.BatchCommands.Add(settings);
            look.BatchCommands.Add(WithKeys(FencingSql.ExistingKeys(schema), keys));
            look.BatchCommands.Add(WithKeys(FencingSql.LockFreeKeys(schema), keys));
            var moved = WithKeys(FencingSql.MovedNames(schema), keys);
            moved.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = [.. candidates.Select(c => c.Name)] });
            moved.Parameters.Add(new NpgsqlParameter<string> { TypedValue = options.Namespace });
            look.BatchCommands.Add(moved);

            await using var reader = await look.ExecuteReaderAsync().ConfigureAwait(false);
            foreach (var into in new[] { null, existing, free, movers })
            {
                while (await reader.ReadAsync().ConfigureAwait(false))
                {
                    into?.Add(reader.GetInt64(0));
                }

                await reader.NextResultAsync().ConfigureAwait(false);
            }
        }

        var busy = existing.Where(k => !free.Contains(k) && !movers.Contains(k)).ToList();
        var bumpable = candidates.Where(c => !movers.Contains(c.Key) && (free.Contains(c.Key) || !existing.Contains(c.Key))).ToList();
        var epochs = new Dictionary<long, long>();
        if (bumpable.Count > 0)
        {
            await using var bump = new NpgsqlBatch(connection, tx);
            foreach (var (key, name) in bumpable)
            {
                var cmd = new NpgsqlBatchCommand(FencingSql.Bump(schema));
                AddBumpParameters(cmd.Parameters, options, key, name);
                bump.BatchCommands.Add(cmd);
            }

            await using var reader = await bump.ExecuteReaderAsync().ConfigureAwait(false);
            foreach (var (key, _) in bumpable)
            {
                await reader.ReadAsync().ConfigureAwait(false);
                epochs[key] = reader.GetInt64(0);
                await reader.NextResultAsync().ConfigureAwait(false);
            }
        }

        await tx.CommitAsync().ConfigureAwait(false);
        return new BatchBump(epochs, busy, [.. candidates.Where(c => movers.Contains(c.Key))]);
    }

    private static NpgsqlBatchCommand WithKeys(string sql, long[] keys)
    {
        var cmd = new NpgsqlBatchCommand(sql);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
        return cmd;
    }

    private static void AddBumpParameters(NpgsqlParameterCollection parameters, HighlanderOptions options, long key, string name)
    {
        parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = options.Namespace });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = options.NodeId });
        parameters.Add(new NpgsqlParameter<string?> { TypedValue = options.Endpoint, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = Environment.MachineName });
        parameters.Add(new NpgsqlParameter<int> { TypedValue = (int)options.LeaseDuration.TotalMilliseconds });
    }

    /// <summary>Why a bump failed for good, for the runner whose acquisition it fails (with what to grant when it was a privilege).</summary>
    public static string DescribeFailure(HighlanderOptions options, string name, PostgresException ex)
    {
        var hint = ex.SqlState == PostgresErrorCodes.InsufficientPrivilege
            ? $" (a node's role needs USAGE on schema {options.FencingSchema} and SELECT, INSERT, UPDATE, DELETE on {options.FencingSchema}.leases)"
            : "";
        return $"Cannot bump the fencing epoch of '{name}' in {options.FencingSchema}.leases: {ex.SqlState}: {ex.MessageText}{hint}";
    }
}

/// <summary>What a batch bump did: the new epochs, the keys whose row an old leader's guarded transaction holds (retry), and the moved names (bump one by one).</summary>
internal sealed record BatchBump(Dictionary<long, long> Epochs, List<long> Busy, List<(long Key, string Name)> Movers);
