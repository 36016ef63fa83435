using HighlanderPG.Testing;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>
/// The suite's PostgreSQL: the server named by HIGHLANDER_TEST_CONNECTION, else a throwaway local server started for
/// the test run (temp data directory, free port) and torn down afterwards.
/// </summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    public const string EnvironmentVariable = "HIGHLANDER_TEST_CONNECTION";

    private LocalPostgresServer? _server;

    public string ConnectionString { get; private set; } = "";

    public async Task InitializeAsync()
    {
        var configured = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(configured))
        {
            ConnectionString = configured;
            return;
        }

        _server = await LocalPostgresServer.StartAsync();
        ConnectionString = _server.ConnectionString;
    }

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }
}

[CollectionDefinition(Name)]
public sealed class SharedServer : ICollectionFixture<PostgresFixture>
{
    public const string Name = "shared PostgreSQL server";
}
