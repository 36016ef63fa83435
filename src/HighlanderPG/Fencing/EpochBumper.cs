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

    /// <summary>Moves the name to <paramref name="key"/> if it was stored under another key, bumps the epoch and commits; returns the new epoch.</summary>
    public static async Task<long> BumpAsync(NpgsqlConnection connection, HighlanderOptions options, long key, string name)
    {
        await using var tx = await connection.BeginTransactionAsync().ConfigureAwait(false);
        await using (var settings = new NpgsqlCommand("SELECT set_config('lock_timeout', $1, true), set_config('synchronous_commit', 'on', true)", connection, tx))
        {
            settings.Parameters.Add(new NpgsqlParameter<string> { TypedValue = LockTimeoutMilliseconds });
            await settings.ExecuteNonQueryAsync().ConfigureAwait(false);
        }

        object? moved;
        await using (var move = new NpgsqlCommand(FencingSql.MoveName(options.FencingSchema), connection, tx))
        {
            move.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
            move.Parameters.Add(new NpgsqlParameter<string> { TypedValue = options.Namespace });
            move.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
            moved = await move.ExecuteScalarAsync().ConfigureAwait(false);
        }

        long result;
        await using (var bump = new NpgsqlCommand(FencingSql.Bump(options.FencingSchema), connection, tx))
        {
            bump.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
            bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = options.Namespace });
            bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
            bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = options.NodeId });
            bump.Parameters.Add(new NpgsqlParameter<string?> { TypedValue = options.Endpoint, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
            bump.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Environment.MachineName });
            bump.Parameters.Add(new NpgsqlParameter<long?> { TypedValue = moved is long m ? m : null, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Bigint });
            bump.Parameters.Add(new NpgsqlParameter<int> { TypedValue = (int)options.LeaseDuration.TotalMilliseconds });
            result = (long)(await bump.ExecuteScalarAsync().ConfigureAwait(false))!;
        }

        await tx.CommitAsync().ConfigureAwait(false);
        return result;
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
