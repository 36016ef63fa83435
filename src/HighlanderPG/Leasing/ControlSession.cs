using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// The lock session's part in step-down and drain requests (docs/lease-protocol.md, "Step down and drain"): at every
/// session start it creates the control objects (with fencing on), LISTENs on the control channel and reads this
/// node's hold-offs, so that a node restarted during a drain stays drained.
/// </summary>
internal static class ControlSession
{
    /// <summary>Prepares the control side of a new session; returns this node's hold-offs (none when the objects do not exist or cannot be read).</summary>
    public static async Task<HoldOffSet> StartAsync(NpgsqlConnection connection, HighlanderOptions options, ILogger logger, CancellationToken stopping)
    {
        var schema = options.FencingSchema;
        if (options.Fencing)
        {
            try
            {
                await ControlSql.EnsureCreatedAsync(connection, schema, stopping).ConfigureAwait(false);
            }
            catch (PostgresException ex) when (ex.InvariantSeverity is "ERROR" && connection.State == System.Data.ConnectionState.Open)
            {
                // Not this role's to create (another owns the schema): the node runs on, and step-down requests reach it once a DBA ran the DDL.
                Log.ControlUnavailable(logger, schema, $"{ex.SqlState}: {ex.MessageText}");
            }
        }

        await using (var listen = new NpgsqlCommand($"LISTEN {ControlSql.Channel(schema)}", connection))
        {
            await listen.ExecuteNonQueryAsync(stopping).ConfigureAwait(false);
        }

        return await ReadAsync(connection, options, long.MaxValue, logger, stopping).ConfigureAwait(false);
    }

    /// <summary>
    /// Whether an error says that this role cannot use the control objects at all (no privilege, an object missing or of
    /// another shape: SQLSTATE classes 42 and 3F), so that the node runs without step-down and drain requests. Any other
    /// error (a cancelled statement, a timeout, a lock or resource error) may pass: the read fails like any statement of the
    /// session (the node gives the session up and reads again on the next one), rather than forget a drain it cannot
    /// read now.
    /// </summary>
    private static bool CannotRead(string sqlState) =>
        sqlState.StartsWith("42", StringComparison.Ordinal) || sqlState.StartsWith("3F", StringComparison.Ordinal);

    /// <summary>
    /// Reads this node's hold-offs; none when the control objects do not exist, or this role cannot use them (logged).
    /// Other errors are thrown: a hold-off that cannot be read now is not taken for none.
    /// </summary>
    public static async Task<HoldOffSet> ReadAsync(NpgsqlConnection connection, HighlanderOptions options, long seenId, ILogger logger, CancellationToken cancellationToken)
    {
        try
        {
            if (!await ControlSql.ExistAsync(connection, options.FencingSchema, cancellationToken).ConfigureAwait(false))
            {
                return HoldOffSet.None with { TopId = 0 }; // every request made once they exist is new to this node
            }

            return await ControlSql.ReadAsync(connection, options.FencingSchema, options.NodeId, seenId, cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.InvariantSeverity is "ERROR" && connection.State == System.Data.ConnectionState.Open && CannotRead(ex.SqlState))
        {
            Log.ControlUnavailable(logger, options.FencingSchema, $"{ex.SqlState}: {ex.MessageText}");
            return HoldOffSet.None;
        }
    }
}
