using System.Collections;
using System.Globalization;
using HighlanderPG.Hosting;
using Npgsql;

namespace HighlanderPG.Cli.Configuration;

/// <summary>Where a command's connection string came from, and the string itself (which may hold a password: never print it).</summary>
internal sealed record ResolvedConnection(string ConnectionString, string Source)
{
    /// <summary><c>host:port/database</c>, for messages: never the password, nor the whole connection string.</summary>
    public string Display => ConnectionResolver.Describe(ConnectionString);
}

/// <summary>
/// Finds the connection string: <c>--connection</c>, else <c>HIGHLANDER_CONNECTION</c>, else libpq's usual variables
/// (<c>PGHOST</c> required; <c>PGPORT</c>, <c>PGUSER</c>, <c>PGPASSWORD</c>, <c>PGDATABASE</c> optional).
/// </summary>
internal static class ConnectionResolver
{
    public const string EnvironmentVariable = "HIGHLANDER_CONNECTION";

    public const string NoConnectionMessage =
        "no connection given: use --connection \"Host=...;Database=...;Username=...\", set HIGHLANDER_CONNECTION, or set PGHOST (with PGPORT, PGUSER, PGPASSWORD, PGDATABASE as needed)";

    /// <summary>Resolves the connection; <see langword="null"/> when nothing is configured.</summary>
    /// <param name="option">The value of <c>--connection</c>, if given.</param>
    /// <param name="environment">The environment (<see cref="Environment.GetEnvironmentVariables()"/>; a dictionary in tests).</param>
    /// <param name="usePgVariables">Whether libpq's <c>PG*</c> variables count.</param>
    public static ResolvedConnection? Resolve(string? option, IDictionary environment, bool usePgVariables = true)
    {
        ArgumentNullException.ThrowIfNull(environment);
        if (!string.IsNullOrWhiteSpace(option))
        {
            return new ResolvedConnection(option, "--connection");
        }

        if (Get(environment, EnvironmentVariable) is { } fromEnvironment)
        {
            return new ResolvedConnection(fromEnvironment, EnvironmentVariable);
        }

        if (!usePgVariables || Get(environment, "PGHOST") is not { } host)
        {
            return null;
        }

        var builder = new NpgsqlConnectionStringBuilder { Host = host };
        if (Get(environment, "PGPORT") is { } port)
        {
            if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var portNumber) || portNumber is < 1 or > 65535)
            {
                // Not a connection string the user wrote: say which variable is wrong.
                throw new FormatException($"PGPORT '{port}' is not a port number");
            }

            builder.Port = portNumber;
        }

        if (Get(environment, "PGUSER") is { } user)
        {
            builder.Username = user;
        }

        if (Get(environment, "PGPASSWORD") is { } password)
        {
            builder.Password = password;
        }

        if (Get(environment, "PGDATABASE") is { } database)
        {
            builder.Database = database;
        }

        return new ResolvedConnection(builder.ConnectionString, "PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE");
    }

    /// <summary>What is wrong with <paramref name="connectionString"/>, or <see langword="null"/>. Never quotes the string itself.</summary>
    public static string? Validate(string connectionString)
    {
        try
        {
            var builder = new NpgsqlConnectionStringBuilder(connectionString);
            // A Target Session Attributes with a single host: Npgsql refuses it at the first connection (run's node refuses
            // it at start too); with several hosts the reads and requests aim at the primary, where the locks are.
            return string.IsNullOrWhiteSpace(builder.Host) ? "the connection string names no Host"
                : ConnectionSettings.CheckHostAndPort(builder) is { } problem ? $"the connection string cannot be used: {problem}"
                : ConnectionSettings.ValidateTargetSession(ConnectionSettings.TargetPrimary(builder, overrideStandbyTargets: true), "the connection string");
        }
        catch (Exception ex) when (ConnectionSettings.IsParseError(ex))
        {
            return $"the connection string cannot be parsed: {ConnectionSettings.DescribeParseError(ex)}";
        }
    }

    /// <summary><c>host:port/database</c>; the password never appears.</summary>
    public static string Describe(string connectionString)
    {
        try
        {
            var builder = new NpgsqlConnectionStringBuilder(connectionString);
            return ConnectionSettings.CheckHostAndPort(builder) is null
                ? $"{builder.Host}:{builder.Port}/{builder.Database ?? builder.Username ?? "(default database)"}"
                : "(an invalid host or port)";
        }
        catch (Exception ex) when (ConnectionSettings.IsParseError(ex))
        {
            return "(unparsable connection string)";
        }
    }

    private static string? Get(IDictionary environment, string name) =>
        environment[name] is string value && !string.IsNullOrWhiteSpace(value) ? value : null;
}
