using HighlanderPG.Testing;

namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>
/// The PostgreSQL these tests use: HIGHLANDER_TEST_CONNECTION if set, else a throwaway <see cref="LocalPostgresServer"/>
/// (the product's own launcher) for the test run.
/// </summary>
public sealed class ServerFixture : IAsyncLifetime
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
public sealed class CliServer : ICollectionFixture<ServerFixture>
{
    public const string Name = "CLI against a shared PostgreSQL";
}
