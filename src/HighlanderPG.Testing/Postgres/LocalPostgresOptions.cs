namespace HighlanderPG.Testing;

/// <summary>Options for <see cref="LocalPostgresServer.StartAsync(LocalPostgresOptions?, CancellationToken)"/>.</summary>
public sealed class LocalPostgresOptions
{
    /// <summary>
    /// The directory holding <c>initdb</c>, <c>pg_ctl</c> and <c>postgres</c>.
    /// </summary>
    /// <value>
    /// The default is <see langword="null"/>: the directory is found by
    /// <see cref="LocalPostgresServer.FindBinDirectory"/>.
    /// </value>
    public string? BinDirectory { get; set; }

    /// <summary>
    /// The server's <c>listen_addresses</c>: a comma-separated list of addresses, or <c>*</c>.
    /// <c>127.0.0.1</c> is always added when the list has neither it nor a wildcard. The server trusts
    /// every client that reaches it (see <see cref="LocalPostgresServer"/>): list only addresses of this
    /// machine that no other machine can reach.
    /// </summary>
    /// <value>The default is <c>"127.0.0.1"</c>.</value>
    public string ListenAddresses { get; set; } = "127.0.0.1";

    /// <summary>
    /// The network namespace to run the server in (a name from <c>ip netns list</c>), or <see langword="null"/>
    /// for the current one. Internal: only the test kit's network lab (test/HighlanderPG.TestKit) sets it.
    /// When set, <c>pg_ctl start</c> runs through <c>ip netns exec {name}</c> (before
    /// <c>runuser -u postgres --</c> when running as root), so the server and everything it forks live
    /// in the namespace, and it needs root. Stopping needs no namespace (<c>pg_ctl stop</c> signals the
    /// server by its process id), so it also works after the namespace was deleted.
    /// </summary>
    /// <value>The default is <see langword="null"/>.</value>
    /// <remarks>
    /// The server's <c>127.0.0.1</c> is then the namespace's loopback, unreachable from the current
    /// namespace: <see cref="LocalPostgresServer.ConnectionString"/> and the server's own readiness check
    /// connect to <see cref="ConnectHost"/> instead, which defaults to the first address of
    /// <see cref="ListenAddresses"/> that is not a loopback address or wildcard.
    /// </remarks>
    internal string? NetworkNamespace { get; set; }

    /// <summary>
    /// The address that <see cref="LocalPostgresServer.ConnectionString"/> (and <see cref="LocalPostgresServer.Host"/>,
    /// the server's readiness check and <see cref="LocalPostgresServer.CreateDatabaseAsync(string, CancellationToken)"/>)
    /// connect to. It must be one the server listens on and reachable from the current namespace.
    /// Internal, with <see cref="NetworkNamespace"/>.
    /// </summary>
    /// <value>
    /// The default is <see langword="null"/>: <c>127.0.0.1</c> without a <see cref="NetworkNamespace"/>;
    /// with one, the first address of <see cref="ListenAddresses"/> other than <c>127.0.0.1</c>,
    /// <c>localhost</c>, <c>::1</c>, <c>*</c> and <c>0.0.0.0</c> (there must be one).
    /// </value>
    internal string? ConnectHost { get; set; }

    /// <summary>
    /// Extra <c>postgresql.conf</c> settings (name to value, for example
    /// <c>["idle_session_timeout"] = "3s"</c>). They are written after the built-in ones,
    /// so they override them. Values are written quoted; PostgreSQL accepts quoted values
    /// for settings of every type.
    /// </summary>
    /// <value>The default is an empty dictionary.</value>
    public IDictionary<string, string> ExtraSettings { get; set; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>
    /// Extra environment variables for the server process (name to value), for example to preload a library
    /// into it: <c>["LD_PRELOAD"] = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"</c> with libfaketime's
    /// <c>FAKETIME_TIMESTAMP_FILE</c> gives the server a wall clock of its own that a test can step without
    /// stepping the machine's. They are set for <c>pg_ctl start</c> (the first start and every
    /// <see cref="LocalPostgresServer.StartAsync(CancellationToken)"/> and
    /// <see cref="LocalPostgresServer.RestartAsync(ShutdownMode, CancellationToken)"/>), so the postmaster and
    /// every backend it forks inherit them; <c>initdb</c> and <c>pg_ctl stop</c> run without them. As root the
    /// server runs as the <c>postgres</c> user: any file a variable names must be readable by that user.
    /// </summary>
    /// <value>The default is an empty dictionary.</value>
    /// <remarks>
    /// Names are letters, digits and <c>_</c>, not starting with a digit; values are single lines without NUL
    /// characters. The dictionary is read when the server is started (<see cref="LocalPostgresServer.StartAsync(LocalPostgresOptions?, CancellationToken)"/>
    /// takes a copy), so later changes to it have no effect.
    /// </remarks>
    public IDictionary<string, string> ServerEnvironment { get; set; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>Throws when the options cannot describe a server.</summary>
    internal void Validate()
    {
        if (BinDirectory is not null && string.IsNullOrWhiteSpace(BinDirectory))
        {
            throw new ArgumentException($"{nameof(BinDirectory)} must be null or a directory path.", nameof(BinDirectory));
        }

        if (string.IsNullOrWhiteSpace(ListenAddresses) || !IsPlainValue(ListenAddresses))
        {
            throw new ArgumentException(
                $"{nameof(ListenAddresses)} must be a non-empty, comma-separated list of addresses without quotes or line breaks; got '{ListenAddresses}'.",
                nameof(ListenAddresses));
        }

        if (NetworkNamespace is not null && !IsNamespaceName(NetworkNamespace))
        {
            throw new ArgumentException(
                $"{nameof(NetworkNamespace)} must be null or a network namespace name (1 to 64 ASCII letters, digits, '_', '-' or '.', not starting with '.'); got '{NetworkNamespace}'.",
                nameof(NetworkNamespace));
        }

        if (ConnectHost is not null && (string.IsNullOrWhiteSpace(ConnectHost) || !IsPlainValue(ConnectHost) || ConnectHost.AsSpan().IndexOfAny(", \t") >= 0))
        {
            throw new ArgumentException(
                $"{nameof(ConnectHost)} must be null or one host name or address; got '{ConnectHost}'.",
                nameof(ConnectHost));
        }

        if (NetworkNamespace is not null && ConnectHost is null && FirstRoutableListenAddress() is null)
        {
            throw new ArgumentException(
                $"With {nameof(NetworkNamespace)} set, the server's 127.0.0.1 is the namespace's own loopback, unreachable from here: " +
                $"list an address of the namespace in {nameof(ListenAddresses)} (got '{ListenAddresses}') or set {nameof(ConnectHost)}.",
                nameof(ListenAddresses));
        }

        if (ExtraSettings is null)
        {
            throw new ArgumentException($"{nameof(ExtraSettings)} must not be null.", nameof(ExtraSettings));
        }

        if (ServerEnvironment is null)
        {
            throw new ArgumentException($"{nameof(ServerEnvironment)} must not be null.", nameof(ServerEnvironment));
        }

        foreach (var (name, value) in ServerEnvironment)
        {
            if (!IsEnvironmentName(name))
            {
                throw new ArgumentException(
                    $"{nameof(ServerEnvironment)} has an invalid variable name '{name}' (letters, digits and '_', not starting with a digit).",
                    nameof(ServerEnvironment));
            }

            if (value is null || value.AsSpan().IndexOfAny('\n', '\r', '\0') >= 0)
            {
                throw new ArgumentException($"{nameof(ServerEnvironment)}['{name}'] must be a single-line value.", nameof(ServerEnvironment));
            }
        }

        foreach (var (name, value) in ExtraSettings)
        {
            if (!IsSettingName(name))
            {
                throw new ArgumentException($"{nameof(ExtraSettings)} has an invalid setting name '{name}'.", nameof(ExtraSettings));
            }

            if (value is null || value.AsSpan().IndexOfAny('\n', '\r', '\0') >= 0)
            {
                throw new ArgumentException($"{nameof(ExtraSettings)}['{name}'] must be a single-line value.", nameof(ExtraSettings));
            }
        }
    }

    /// <summary>The addresses actually written to <c>listen_addresses</c>.</summary>
    internal string EffectiveListenAddresses()
    {
        var parts = ListenAddresses.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var coversLoopback = parts.Any(p => p is "127.0.0.1" or "*" or "0.0.0.0");
        return string.Join(',', coversLoopback ? parts : parts.Prepend("127.0.0.1"));
    }

    /// <summary>The address clients connect to (see <see cref="ConnectHost"/>); call after <see cref="Validate"/>.</summary>
    internal string EffectiveConnectHost() =>
        ConnectHost ?? (NetworkNamespace is null ? "127.0.0.1" : FirstRoutableListenAddress()!);

    private string? FirstRoutableListenAddress() =>
        ListenAddresses
            .Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .FirstOrDefault(p => p is not ("127.0.0.1" or "localhost" or "::1" or "*" or "0.0.0.0" or "::"));

    private static bool IsNamespaceName(string name) =>
        name.Length is > 0 and <= 64
        && name[0] != '.'
        && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.');

    private static bool IsPlainValue(string value) => value.AsSpan().IndexOfAny("'\"\\\n\r\0") < 0;

    private static bool IsEnvironmentName(string name) =>
        name.Length > 0
        && !char.IsAsciiDigit(name[0])
        && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static bool IsSettingName(string name) =>
        name.Length > 0
        && (char.IsAsciiLetter(name[0]) || name[0] == '_')
        && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.');
}
