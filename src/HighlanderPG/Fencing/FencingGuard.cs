using Npgsql;

namespace HighlanderPG.Fencing;

/// <summary>
/// Guards writes to PostgreSQL with a fencing token: inside the caller's own transaction (on any connection), it
/// confirms that the epoch is still the singleton's current one and keeps it so until the transaction ends.
/// </summary>
/// <remarks>
/// It calls <c>{schema}.assert_epoch(name, epoch, namespace)</c>, which checks that the epoch is current and that the
/// holder's lock session is still alive, then reads the singleton's row <c>FOR SHARE</c> and checks both again: a new
/// leader's epoch bump waits for this transaction, so its writes are ordered before the new epoch. It fails with
/// SQLSTATE <c>HL001</c> once the holder's session has ended (even before the next leader's bump lands) and after the
/// bump. It also bounds how long this transaction may stay idle: the lease (<c>idle_in_transaction_session_timeout</c>,
/// for this transaction only); a client idle longer between two statements has its session ended by the server
/// (SQLSTATE <c>25P03</c>) and nothing of the transaction commits. Unguarded writes are not protected.
/// See docs/lease-protocol.md, "Fencing".
/// </remarks>
public static class FencingGuard
{
    /// <summary>Fails the transaction with <see cref="StaleEpochException"/> unless <paramref name="epoch"/> is current for the singleton.</summary>
    /// <param name="transaction">The caller's open transaction; the guard holds until it commits or rolls back.</param>
    /// <param name="name">The singleton's name.</param>
    /// <param name="epoch">The epoch this work was started with (<see cref="ILeadership.FencingEpoch"/>).</param>
    /// <param name="namespace">The singleton's namespace (<see cref="HighlanderOptions.Namespace"/>).</param>
    /// <param name="schema">The fencing schema (<see cref="HighlanderOptions.FencingSchema"/>).</param>
    /// <param name="cancellationToken">Cancels the check.</param>
    public static async Task AssertEpochAsync(NpgsqlTransaction transaction, string name, long epoch, string @namespace = "highlander", string schema = "highlander", CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        ArgumentNullException.ThrowIfNull(name);
        if (!FencingSql.IsValidSchema(schema))
        {
            throw new ArgumentException($"Fencing schema '{schema}' must be {FencingSql.SchemaRule}.", nameof(schema));
        }

        var connection = transaction.Connection ?? throw new InvalidOperationException("The transaction is already completed.");
        await using var cmd = new NpgsqlCommand($"SELECT {schema}.assert_epoch($1, $2, $3)", connection, transaction);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = epoch });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = @namespace });
        try
        {
            await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.SqlState == FencingSql.StaleEpochSqlState)
        {
            throw new StaleEpochException(name, epoch, ex);
        }
    }

    /// <summary>
    /// The same check for this leadership's own epoch: call it inside each transaction whose writes must not land after
    /// another node took over.
    /// </summary>
    /// <param name="leadership">The child's leadership (fencing must be on: <see cref="HighlanderOptions.Fencing"/>).</param>
    /// <param name="transaction">The caller's open transaction.</param>
    /// <param name="cancellationToken">Cancels the check.</param>
    public static Task AssertCurrentAsync(this ILeadership leadership, NpgsqlTransaction transaction, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(leadership);
        var epoch = leadership.FencingEpoch ?? throw new InvalidOperationException($"Singleton '{leadership.Name}' has no fencing epoch: set {nameof(HighlanderOptions)}.{nameof(HighlanderOptions.Fencing)} = true.");
        return AssertEpochAsync(transaction, leadership.Name, epoch, leadership.Namespace, leadership.FencingSchema, cancellationToken);
    }
}
