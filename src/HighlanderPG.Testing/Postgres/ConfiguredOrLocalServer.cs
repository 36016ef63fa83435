namespace HighlanderPG.Testing;

/// <summary>
/// The PostgreSQL a test suite (or tool) uses: the server named by an environment variable when it is set, otherwise a
/// throwaway <see cref="LocalPostgresServer"/> that is torn down on dispose.
/// </summary>
public sealed class ConfiguredOrLocalServer : IAsyncDisposable
{
    /// <summary>The environment variable the test suites read: <c>HIGHLANDER_TEST_CONNECTION</c>.</summary>
    public const string TestConnectionVariable = "HIGHLANDER_TEST_CONNECTION";

    private readonly LocalPostgresServer? _local;

    private ConfiguredOrLocalServer(string connectionString, LocalPostgresServer? local)
    {
        ConnectionString = connectionString;
        _local = local;
    }

    /// <summary>The connection string to use.</summary>
    public string ConnectionString { get; }

    /// <summary>The local server started for this, or <see langword="null"/> when a configured one is used.</summary>
    public LocalPostgresServer? Local => _local;

    /// <summary>Uses the server in <paramref name="environmentVariable"/>, or starts a local one.</summary>
    /// <param name="environmentVariable">The variable holding a connection string.</param>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <returns>The server to use.</returns>
    public static async Task<ConfiguredOrLocalServer> StartAsync(string environmentVariable = TestConnectionVariable, CancellationToken cancellationToken = default)
    {
        var configured = Environment.GetEnvironmentVariable(environmentVariable);
        if (!string.IsNullOrWhiteSpace(configured))
        {
            return new ConfiguredOrLocalServer(configured, null);
        }

        var local = await LocalPostgresServer.StartAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
        return new ConfiguredOrLocalServer(local.ConnectionString, local);
    }

    /// <summary>Stops and deletes the local server, if one was started.</summary>
    /// <returns>A task that completes when it is gone.</returns>
    public async ValueTask DisposeAsync()
    {
        if (_local is not null)
        {
            await _local.DisposeAsync().ConfigureAwait(false);
        }
    }
}
