using HighlanderPG.Testing;

namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>
/// The PostgreSQL these tests use: HIGHLANDER_TEST_CONNECTION if set, else a throwaway <see cref="LocalPostgresServer"/>
/// (the product's own launcher) for the test run.
/// </summary>
public sealed class ServerFixture : IAsyncLifetime
{
    private LocalPostgresServer? _server;

    public string ConnectionString { get; private set; } = "";

    public async Task InitializeAsync()
    {
        var configured = Environment.GetEnvironmentVariable("HIGHLANDER_TEST_CONNECTION");
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
public sealed class CliServer : ICollectionFixture<ServerFixture>
{
    public const string Name = "CLI against a shared PostgreSQL";
}
