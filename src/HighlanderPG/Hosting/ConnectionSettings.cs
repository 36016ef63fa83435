using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Hosting;

/// <summary>How HighlanderPG turns the user's connection string into its own dedicated data sources.</summary>
internal static class ConnectionSettings
{
    /// <summary>Parses the connection string; throws <see cref="ArgumentException"/> with Npgsql's reason when it is malformed.</summary>
    public static NpgsqlConnectionStringBuilder Parse(string connectionString) => new(connectionString);

    /// <summary>Whether <paramref name="ex"/> is how Npgsql's connection string builder refuses a string.</summary>
    public static bool IsParseError(Exception ex) => ex is ArgumentException or FormatException or InvalidCastException or KeyNotFoundException;

    /// <summary>
    /// What is wrong with a connection string, from the exception Npgsql's builder threw (<see cref="IsParseError"/>):
    /// the keyword it did not know, the keyword whose value it could not read, or where the text stops being
    /// <c>Keyword=Value</c> pairs. Never quotes a value (it may be a password), and an unknown keyword only when it is a
    /// near miss of a real one (a typo): an unknown "keyword" may be the tail of a password that holds an unquoted
    /// <c>;</c> (<c>Password=ab;cd=ef</c>).
    /// </summary>
    public static string DescribeParseError(Exception ex)
    {
        var keyword = (ex as ArgumentException)?.ParamName;
        switch (ex.InnerException)
        {
            case KeyNotFoundException when keyword is not null:
                return NearestKeyword(keyword) is { } meant
                    ? $"unknown keyword '{keyword}' (did you mean {meant}?)"
                    : "it has a keyword Npgsql does not know (not repeated here: it may be part of a password). Check the keywords' spelling (Npgsql's are e.g. Host, Port, Database, Username, Password, SSL Mode, Timeout: see https://www.npgsql.org/doc/connection-string-parameters.html), and quote a value that holds ';' or '=' (Password='a;b')";
            case OverflowException or ArgumentOutOfRangeException when keyword is not null:
                return $"the value of '{keyword}' is out of range";
            case { } inner when keyword is not null && (inner is FormatException or ArgumentException or InvalidCastException):
                return $"the value of '{keyword}' is not valid (not the number, true/false or named mode the keyword takes)";
        }

        const string Malformed = "starting at index ";
        var at = ex.Message.IndexOf(Malformed, StringComparison.Ordinal);
        if (ex is ArgumentException && at >= 0 && int.TryParse(ex.Message.AsSpan(at + Malformed.Length).TrimEnd('.'), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var index))
        {
            return $"it is not a list of Keyword=Value pairs separated by ';' (malformed from character {index + 1})";
        }

        return "it is not a valid connection string";
    }

    /// <summary>
    /// The keyword Npgsql knows that <paramref name="unknown"/> is a near miss of (one edit for 4-7 letters, two for
    /// more; case and spaces ignored), or <see langword="null"/>.
    /// </summary>
    internal static string? NearestKeyword(string unknown)
    {
        var typed = Letters(unknown);
        var allowed = typed.Length >= 8 ? 2 : typed.Length >= 4 ? 1 : 0;
        string? best = null;
        var bestDistance = allowed + 1;
        foreach (var known in KnownKeywords)
        {
            var distance = EditDistance(typed, Letters(known));
            if (distance < bestDistance)
            {
                best = known;
                bestDistance = distance;
            }
        }

        return best;

        static string Letters(string keyword) => keyword.Replace(" ", "", StringComparison.Ordinal).ToLowerInvariant();
    }

    /// <summary>Npgsql's keywords a typo is compared with (its builder lists only the keywords a string sets).</summary>
    private static readonly string[] KnownKeywords =
    [
        "Host", "Port", "Database", "Username", "Password", "Passfile", "Application Name", "Enlist", "Search Path",
        "Client Encoding", "Encoding", "Timezone", "SSL Mode", "Trust Server Certificate", "SSL Certificate", "SSL Key",
        "SSL Password", "Root Certificate", "Check Certificate Revocation", "Channel Binding", "Kerberos Service Name",
        "Include Realm", "Persist Security Info", "Log Parameters", "Include Error Detail", "Pooling", "Minimum Pool Size",
        "Maximum Pool Size", "Connection Idle Lifetime", "Connection Pruning Interval", "Connection Lifetime", "Timeout",
        "Command Timeout", "Cancellation Timeout", "Target Session Attributes", "Load Balance Hosts",
        "Host Recheck Seconds", "Keepalive", "Tcp Keepalive", "Tcp Keepalive Time", "Tcp Keepalive Interval",
        "Read Buffer Size", "Write Buffer Size", "Socket Receive Buffer Size", "Socket Send Buffer Size",
        "Max Auto Prepare", "Auto Prepare Min Usages", "No Reset On Close", "Options", "Server Compatibility Mode",
        "Multiplexing", "Write Coalescing Buffer Threshold Bytes", "Array Nullability Mode", "Require Auth",
        "GSS Encryption Mode", "SSL Negotiation",
    ];

    /// <summary>Optimal string alignment distance: insertions, deletions, substitutions and swaps of two neighbours.</summary>
    private static int EditDistance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }

        for (var j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            for (var j = 1; j <= b.Length; j++)
            {
                var cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                {
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
                }
            }
        }

        return d[a.Length, b.Length];
    }

    /// <summary>
    /// What is wrong with the hosts or the port, which Npgsql's builder takes as they are and only trips over when it
    /// connects: a host with a space or '=' in it (a missing ';' makes the next pair, a password perhaps, part of the
    /// host), or a port outside 1-65535. <see langword="null"/> when they are fine. Never quotes the host.
    /// </summary>
    public static string? CheckHostAndPort(NpgsqlConnectionStringBuilder builder)
    {
        if (builder.Host is { } hosts && hosts.Split(',').Any(h => !PlausibleHost(h)))
        {
            return "its Host holds a space or '=' (not repeated here: is a ';' missing between two Keyword=Value pairs?)";
        }

        return builder.Port is < 1 or > 65535 ? "the value of 'port' is out of range (1-65535)" : null;
    }

    /// <summary>A host name, an address or a Unix socket's directory (which may hold spaces), never a '='.</summary>
    private static bool PlausibleHost(string host)
    {
        var trimmed = host.Trim();
        return !trimmed.Contains('=', StringComparison.Ordinal) && (trimmed.StartsWith('/') || !trimmed.Any(char.IsWhiteSpace));
    }

    /// <summary>Returns what is wrong with the connection string for holding locks, or <see langword="null"/>.</summary>
    public static string? Validate(string? connectionString)
    {
        if (string.IsNullOrWhiteSpace(connectionString))
        {
            return $"{nameof(HighlanderOptions)}.{nameof(HighlanderOptions.ConnectionString)} is required: give the PostgreSQL connection string of the database that holds the locks.";
        }

        NpgsqlConnectionStringBuilder builder;
        try
        {
            builder = Parse(connectionString);
        }
        catch (Exception ex) when (IsParseError(ex))
        {
            return $"{nameof(HighlanderOptions)}.{nameof(HighlanderOptions.ConnectionString)} cannot be parsed: {DescribeParseError(ex)}.";
        }

        if (builder.Multiplexing)
        {
            return $"{nameof(HighlanderOptions)}.{nameof(HighlanderOptions.ConnectionString)} has Multiplexing=true: multiplexed connections cannot hold session advisory locks. Remove Multiplexing from the connection string.";
        }

        if (string.IsNullOrWhiteSpace(builder.Host))
        {
            return $"{nameof(HighlanderOptions)}.{nameof(HighlanderOptions.ConnectionString)} names no Host.";
        }

        if (CheckHostAndPort(builder) is { } hostOrPort)
        {
            return $"{nameof(HighlanderOptions)}.{nameof(HighlanderOptions.ConnectionString)} cannot be used: {hostOrPort}.";
        }

        return ValidateTargetSession(builder, $"{nameof(HighlanderOptions)}.{nameof(HighlanderOptions.ConnectionString)}");
    }

    /// <summary>
    /// Parses a connection string given to a client of the cluster (cluster control, messaging, discovery, the dashboard,
    /// the CLI's reads), and aims it at the primary when it lists several hosts (the locks and the control objects live
    /// there only). A malformed one, one without a usable host, or a single host with a <c>Target Session Attributes</c>
    /// Npgsql would refuse at the first connection, is refused with an <see cref="ArgumentException"/> that says why by
    /// keyword: it never quotes the string, and does not carry Npgsql's exception (whose message may quote part of a
    /// password that holds an unquoted <c>;</c>).
    /// </summary>
    /// <param name="connectionString">The connection string.</param>
    /// <param name="what">How to name it in a message (the parameter or option).</param>
    public static NpgsqlConnectionStringBuilder ForClient(string connectionString, string what)
    {
        if (string.IsNullOrWhiteSpace(connectionString))
        {
            throw new ArgumentException($"{what} is empty: give the connection string of the cluster's database.", what);
        }

        NpgsqlConnectionStringBuilder builder;
        try
        {
            builder = Parse(connectionString);
        }
        catch (Exception ex) when (IsParseError(ex))
        {
            throw new ArgumentException($"{what} cannot be parsed: {DescribeParseError(ex)}.", what);
        }

        var problem = string.IsNullOrWhiteSpace(builder.Host) ? "it names no Host"
            : CheckHostAndPort(builder) is { } hostOrPort ? hostOrPort
            : null;
        if (problem is not null)
        {
            throw new ArgumentException($"{what} cannot be used: {problem}.", what);
        }

        TargetPrimary(builder, overrideStandbyTargets: true);
        if (ValidateTargetSession(builder, what) is { } target)
        {
            throw new ArgumentException(target, what);
        }

        return builder;
    }

    /// <summary>Whether <c>Host</c> lists several servers (<c>Host=a,b:5433</c>): Npgsql's multi-host data source.</summary>
    public static bool IsMultiHost(NpgsqlConnectionStringBuilder builder) => builder.Host?.Contains(',', StringComparison.Ordinal) == true;

    /// <summary>
    /// What is wrong with <c>Target Session Attributes</c> for holding locks, or <see langword="null"/>. Locks live on the
    /// primary only (a standby is refused, and a promoted standby starts with none), so with several hosts the sessions
    /// must aim at the primary: <c>primary</c> (the default HighlanderPG applies when none is given), <c>read-write</c> or
    /// <c>prefer-primary</c>. The others would keep a node on a standby, refused, for as long as that standby answers
    /// first. Npgsql accepts the keyword only with several hosts.
    /// </summary>
    public static string? ValidateTargetSession(NpgsqlConnectionStringBuilder builder, string what)
    {
#pragma warning disable CS0618 // The keyword is how users give it in the connection string.
        var target = builder.TargetSessionAttributes;
#pragma warning restore CS0618
        if (string.IsNullOrWhiteSpace(target))
        {
            return null;
        }

        var normalized = target.Trim().ToLowerInvariant();
        if (!IsMultiHost(builder))
        {
            return normalized == "any"
                ? null
                : $"{what} has Target Session Attributes={target} but a single Host: Npgsql applies it only to a list of hosts. List the primary and its standbys (Host=primary,standby;Target Session Attributes=primary), or remove Target Session Attributes.";
        }

        return normalized is "primary" or "read-write" or "prefer-primary"
            ? null
            : $"{what} has Target Session Attributes={target}: HighlanderPG's locks live on the primary only (a standby is refused, and a promoted standby starts with no locks), and with '{target}' a node would keep connecting to a standby. Set Target Session Attributes=primary (or read-write), or leave it out: with several hosts HighlanderPG then uses primary.";
    }

    /// <summary>
    /// With several hosts and no <c>Target Session Attributes</c>, aims at the primary (Npgsql's default, <c>any</c>,
    /// would take whichever host answers first, a standby included). With <paramref name="overrideStandbyTargets"/>
    /// (discovery: the locks are visible on the primary only), a target that could reach a standby (<c>any</c>,
    /// <c>standby</c>, <c>prefer-standby</c>, <c>read-only</c>) is replaced by <c>primary</c> too. Returns the builder.
    /// </summary>
    public static NpgsqlConnectionStringBuilder TargetPrimary(NpgsqlConnectionStringBuilder builder, bool overrideStandbyTargets = false)
    {
#pragma warning disable CS0618 // The keyword is how users give it in the connection string.
        if (IsMultiHost(builder)
            && (string.IsNullOrWhiteSpace(builder.TargetSessionAttributes)
                || (overrideStandbyTargets && builder.TargetSessionAttributes.Trim().ToLowerInvariant() is not ("primary" or "read-write" or "prefer-primary"))))
        {
            builder.TargetSessionAttributes = "primary";
        }
#pragma warning restore CS0618

        return builder;
    }

    /// <summary>
    /// Whether the connection string sets <paramref name="keyword"/> (Npgsql's own <c>ContainsKey</c> answers whether a
    /// keyword exists; its normalized string names each setting given, by its canonical name).
    /// </summary>
    internal static bool IsSet(NpgsqlConnectionStringBuilder builder, string keyword) =>
        new System.Data.Common.DbConnectionStringBuilder { ConnectionString = builder.ConnectionString }.ContainsKey(keyword);

    /// <summary>How many statements a lock session's connection prepares automatically (see <see cref="BuildDataSource"/>).</summary>
    internal const int LockSessionAutoPrepare = 16;

    /// <summary>The server and database, for logs: never the password, nor the whole connection string.</summary>
    public static string Describe(NpgsqlConnectionStringBuilder builder)
    {
        if (builder.Host is { } host && host.Split(',').Any(h => !PlausibleHost(h)))
        {
            return "(an invalid host)"; // it may hold the next pair, a password perhaps: never shown
        }

        if (!IsMultiHost(builder))
        {
            return $"{builder.Host}:{builder.Port}/{builder.Database ?? builder.Username}";
        }

        // Host=a,b:5433 with Port=5432: a:5432,b:5433 (an IPv6 address is bracketed when it has a port).
        var hosts = builder.Host!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(h => h.EndsWith(']') || h.Count(c => c == ':') != 1 ? $"{h}:{builder.Port}" : h);
        return $"{string.Join(',', hosts)}/{builder.Database ?? builder.Username}";
    }

    /// <summary>
    /// A dedicated physical connection per open: <c>Pooling=false</c> (a pooled connection's close does not end its backend,
    /// so it would not free the locks), no Npgsql keepalive (the node's own heartbeats renew the lease and are timed),
    /// and a command timeout that lets a stuck round trip fail on its own after the node has given up on it.
    /// </summary>
    /// <remarks>
    /// <para>
    /// With <paramref name="autoPrepare"/> (the lock sessions'), a statement run a second time on a connection is prepared
    /// on the server (Npgsql's automatic preparation, <c>Max Auto Prepare</c> 16, <c>Auto Prepare Min Usages</c> 2, unless
    /// the connection string sets them): the lock session runs a handful of statements over and over (its heartbeat, its
    /// try, its release), and the server then no longer parses and plans them each time (about 0.2 ms of the server's CPU
    /// per try here), which counts most in a take-over, when every process on the machine wants the CPU at once. The
    /// waiter's session is left as it is (one long statement per wait slice).
    /// </para>
    /// <para>
    /// The user's <see cref="HighlanderOptions.ConfigureDataSource"/> runs on the builder first (passwords, certificates);
    /// then the settings above are applied again over whatever it set, and tracing is turned off for every statement of
    /// these sessions, so that an application tracing Npgsql does not get a span per heartbeat and wait slice.
    /// </para>
    /// </remarks>
    public static NpgsqlDataSource BuildDataSource(NpgsqlConnectionStringBuilder source, string applicationName, HighlanderOptions options, ILoggerFactory loggerFactory, bool autoPrepare = false)
    {
        var builder = new NpgsqlConnectionStringBuilder(source.ConnectionString)
        {
            Pooling = false,
            Multiplexing = false,
            ApplicationName = applicationName,
            KeepAlive = 0,
            CommandTimeout = Leasing.LeaseTimings.From(options).CommandTimeoutSeconds,
            Enlist = false,
        };
        TargetPrimary(builder);
        if (autoPrepare && !IsSet(source, "Max Auto Prepare"))
        {
            builder.MaxAutoPrepare = LockSessionAutoPrepare;
            if (!IsSet(source, "Auto Prepare Min Usages"))
            {
                builder.AutoPrepareMinUsages = 2;
            }
        }

        var dataSource = new NpgsqlDataSourceBuilder(builder.ConnectionString);
        dataSource.UseLoggerFactory(new Diagnostics.MinimumLevelLoggerFactory(loggerFactory, LogLevel.Warning));
        options.ConfigureDataSource?.Invoke(dataSource);
        Enforce(dataSource.ConnectionStringBuilder, builder);
        dataSource.ConfigureTracing(ExcludeFromTraces);
        return dataSource.Build();
    }

    /// <summary>
    /// Puts back what the sessions depend on, whatever the user's hook changed: a pooled or multiplexed connection would not
    /// end its backend on close (the locks would outlive the session), the application name is how nodes and discovery
    /// recognise a holder, and the timeouts belong to the lease.
    /// </summary>
    private static void Enforce(NpgsqlConnectionStringBuilder target, NpgsqlConnectionStringBuilder required)
    {
        target.Pooling = required.Pooling;
        target.Multiplexing = required.Multiplexing;
        target.ApplicationName = required.ApplicationName;
        target.KeepAlive = required.KeepAlive;
        target.CommandTimeout = required.CommandTimeout;
        target.Enlist = required.Enlist;
    }

    /// <summary>
    /// No span for any statement, batch, copy or physical open of HighlanderPG's own sessions (Npgsql's ActivitySource
    /// "Npgsql" is process-wide: an app's <c>AddNpgsql()</c> would otherwise trace every heartbeat and wait slice).
    /// Applied after the user's hook, so it wins over a filter set there.
    /// </summary>
    private static void ExcludeFromTraces(NpgsqlTracingOptionsBuilder tracing) => tracing
        .ConfigureCommandFilter(static _ => false)
        .ConfigureBatchFilter(static _ => false)
        .ConfigureCopyOperationFilter(static _ => false)
        .EnablePhysicalOpenTracing(false)
        .EnableFirstResponseEvent(false);
}
