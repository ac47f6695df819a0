{
  description = "uplosi: convert raw OS disk images and upload them to AWS, Azure, GCP, OpenStack, OCI registries and libvirt";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachDefaultSystem (system:
      let
        pkgs = import nixpkgs { inherit system; };
        uplosi = pkgs.rustPlatform.buildRustPackage {
          pname = "uplosi";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The libvirt provider links libvirt's client library (the `virt` crate finds it with pkg-config).
          nativeBuildInputs = [ pkgs.pkg-config ];
          buildInputs = [ pkgs.libvirt ];
          # The integration tests need qemu-img, mkfs and emulators; run them with scripts/test.sh instead.
          doCheck = false;
          meta = {
            description = "Convert raw OS disk images and upload them to AWS, Azure, GCP, OpenStack, OCI registries and libvirt";
            license = pkgs.lib.licenses.asl20;
            mainProgram = "uplosi";
          };
        };
      in
      {
        packages.default = uplosi;

        apps.default = {
          type = "app";
          program = "${uplosi}/bin/uplosi";
        };

        devShells.default = pkgs.mkShell {
          inputsFrom = [ uplosi ];
          packages = with pkgs; [
            cargo
            rustc
            rustfmt
            clippy
            cargo-nextest
            qemu-utils
            util-linux
            e2fsprogs
            dosfstools
            mtools
            pigz
            gnutar
            gzip
            python3Packages.moto
            awscli2
            skopeo
            libvirt
          ];
        };
      });
}
