using Npgsql;

namespace HighlanderPG.Fencing;

/// <summary>
/// Creating or upgrading a versioned set of objects in the fencing schema (messaging's, the control functions'): checked
/// first without a lock, then again under the schema's DDL lock (<see cref="FencingSql.LockDdlAsync"/>), so that
/// concurrent nodes run the DDL once.
/// </summary>
internal static class SchemaObjects
{
    /// <summary>Runs <paramref name="ddl"/> unless <paramref name="existsSql"/> (one parameter: the schema) says the objects are current.</summary>
    public static async Task EnsureCurrentAsync(NpgsqlConnection connection, string schema, string existsSql, Func<string, string> ddl, CancellationToken cancellationToken)
    {
        if (await IsCurrentAsync(connection, null, schema, existsSql, cancellationToken).ConfigureAwait(false))
        {
            return;
        }

        await using var tx = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
        await FencingSql.LockDdlAsync(connection, tx, schema, cancellationToken).ConfigureAwait(false);
        if (!await IsCurrentAsync(connection, tx, schema, existsSql, cancellationToken).ConfigureAwait(false))
        {
            await using var command = new NpgsqlCommand(ddl(schema), connection, tx);
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }

        await tx.CommitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Whether <paramref name="existsSql"/> (one parameter: the schema) says the objects are current.</summary>
    public static async Task<bool> IsCurrentAsync(NpgsqlConnection connection, NpgsqlTransaction? tx, string schema, string existsSql, CancellationToken cancellationToken)
    {
        await using var check = new NpgsqlCommand(existsSql, connection, tx);
        check.Parameters.Add(new NpgsqlParameter<string> { TypedValue = schema });
        return (bool)(await check.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
    }
}
