using HighlanderPG.Testing;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>
/// The suite's PostgreSQL: the server named by HIGHLANDER_TEST_CONNECTION, else a throwaway local server started for
/// the test run (temp data directory, free port) and torn down afterwards.
/// </summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    private ConfiguredOrLocalServer? _server;

    public string ConnectionString => _server?.ConnectionString ?? throw new InvalidOperationException("The fixture has not started.");

    public async Task InitializeAsync() => _server = await ConfiguredOrLocalServer.StartAsync();

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
