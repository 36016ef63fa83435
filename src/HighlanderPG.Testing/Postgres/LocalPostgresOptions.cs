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
    /// Tests that put clients in network namespaces add the host side of their veth pair here
    /// (for example <c>"127.0.0.1,10.213.0.1"</c>). <c>127.0.0.1</c> is always added when the
    /// list has neither it nor a wildcard, because <see cref="LocalPostgresServer.ConnectionString"/>
    /// connects there.
    /// </summary>
    /// <value>The default is <c>"127.0.0.1"</c>.</value>
    public string ListenAddresses { get; set; } = "127.0.0.1";

    /// <summary>
    /// Extra <c>postgresql.conf</c> settings (name to value, for example
    /// <c>["idle_session_timeout"] = "3s"</c>). They are written after the built-in ones,
    /// so they override them. Values are written quoted; PostgreSQL accepts quoted values
    /// for settings of every type.
    /// </summary>
    /// <value>The default is an empty dictionary.</value>
    public IDictionary<string, string> ExtraSettings { get; set; } = new Dictionary<string, string>(StringComparer.Ordinal);

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

        if (ExtraSettings is null)
        {
            throw new ArgumentException($"{nameof(ExtraSettings)} must not be null.", nameof(ExtraSettings));
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

    private static bool IsPlainValue(string value) => value.AsSpan().IndexOfAny("'\"\\\n\r\0") < 0;

    private static bool IsSettingName(string name) =>
        name.Length > 0
        && (char.IsAsciiLetter(name[0]) || name[0] == '_')
        && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.');
}
