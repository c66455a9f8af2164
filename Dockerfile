# The image every cluster node runs (cluster.yaml, `docker.image`): Ray's own GPU image of the
# Ray version this project pins, with the project and all its dependencies baked in, so a node
# installs nothing when it starts. Build and push it as the README says ("On a cloud cluster").
#
#   docker build -t ray-video-anomaly:2.60.0-py311-gpu .
#
# Python 3.11 and Ray 2.60.0 come with the base image; torch's wheels bring their own CUDA
# libraries (the host needs only the NVIDIA driver, which the nodes' AMI has).
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/ray-video-anomaly

# The heavy dependencies first, in their own layer: a code change does not re-download torch.
COPY --chown=ray:users pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps))" \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself (jobs submitted with --working-dir . run the submitted copy instead).
COPY --chown=ray:users anomaly ./anomaly
COPY --chown=ray:users ray_jobs ./ray_jobs
COPY --chown=ray:users tune_configs ./tune_configs
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import anomaly.training, anomaly.tuning, anomaly.live.app, torch, ray; assert ray.__version__ == '2.60.0', ray.__version__"
