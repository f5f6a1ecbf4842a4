/*
 * AccmTokenTopK TensorRT plugin (IPluginV3OneCore/Build/Runtime + IPluginCreatorV3One).
 */
#include "accmTokenTopKPlugin.h"
#include "accmTokenTopKKernel.h"

#include <cstring>
#include <exception>

using namespace nvinfer1;

namespace accm
{
namespace
{
constexpr int32_t kScores = 0;
constexpr int32_t kTokens = 1;
constexpr int32_t kNbInputs = 2;

bool readInt(PluginField const& field, int32_t& out)
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kINT32: out = *static_cast<int32_t const*>(field.data); return true;
    case PluginFieldType::kINT64: out = static_cast<int32_t>(*static_cast<int64_t const*>(field.data)); return true;
    case PluginFieldType::kINT16: out = *static_cast<int16_t const*>(field.data); return true;
    case PluginFieldType::kINT8: out = *static_cast<int8_t const*>(field.data); return true;
    default: return false;
    }
}

bool isFloatOrHalf(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

ElementType elementType(DataType t)
{
    return t == DataType::kHALF ? ElementType::kHALF : ElementType::kFLOAT;
}
} // namespace

AccmTokenTopK::AccmTokenTopK(int32_t k, int32_t emitDiscarded, std::string const& nameSpace)
    : mK(k)
    , mEmitDiscarded(emitDiscarded ? 1 : 0)
    , mNamespace(nameSpace)
{
    initFields();
}

AccmTokenTopK::AccmTokenTopK(AccmTokenTopK const& other)
    : mK(other.mK)
    , mEmitDiscarded(other.mEmitDiscarded)
    , mNamespace(other.mNamespace)
{
    initFields();
}

void AccmTokenTopK::initFields()
{
    mFields.clear();
    mFields.emplace_back("k", &mK, PluginFieldType::kINT32, 1);
    mFields.emplace_back("emit_discarded", &mEmitDiscarded, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* AccmTokenTopK::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* AccmTokenTopK::clone() noexcept
{
    try
    {
        return new AccmTokenTopK(*this);
    }
    catch (std::exception const&)
    {
        return nullptr;
    }
}

char const* AccmTokenTopK::getPluginName() const noexcept
{
    return kPluginName;
}

char const* AccmTokenTopK::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* AccmTokenTopK::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

int32_t AccmTokenTopK::getNbOutputs() const noexcept
{
    return mEmitDiscarded ? 4 : 2;
}

int32_t AccmTokenTopK::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs())
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kTokens];
    outputTypes[1] = DataType::kINT32;
    if (mEmitDiscarded)
    {
        outputTypes[2] = inputTypes[kTokens];
        outputTypes[3] = DataType::kINT32;
    }
    return 0;
}

int32_t AccmTokenTopK::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs() || inputs[kScores].nbDims != 2
        || inputs[kTokens].nbDims != 3)
    {
        return -1;
    }
    // Output shapes depend only on input shapes: k is a build-time attribute.
    IDimensionExpr const* batch = inputs[kScores].d[0];
    IDimensionExpr const* n = inputs[kScores].d[1];
    IDimensionExpr const* dim = inputs[kTokens].d[2];
    IDimensionExpr const* k = exprBuilder.constant(mK);
    outputs[0].nbDims = 3;
    outputs[0].d[0] = batch;
    outputs[0].d[1] = k;
    outputs[0].d[2] = dim;
    outputs[1].nbDims = 2;
    outputs[1].d[0] = batch;
    outputs[1].d[1] = k;
    if (mEmitDiscarded)
    {
        IDimensionExpr const* rest = exprBuilder.operation(DimensionOperation::kSUB, *n, *k);
        outputs[2].nbDims = 3;
        outputs[2].d[0] = batch;
        outputs[2].d[1] = rest;
        outputs[2].d[2] = dim;
        outputs[3].nbDims = 2;
        outputs[3].d[0] = batch;
        outputs[3].d[1] = rest;
    }
    return 0;
}

bool AccmTokenTopK::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (pos < 0 || pos >= nbInputs + nbOutputs || inOut[pos].desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case kScores: return isFloatOrHalf(type);
    case kTokens: return isFloatOrHalf(type);
    case 2: // kept
    case 4: // discarded
        return type == inOut[kTokens].desc.type;
    case 3: // kept_index
    case 5: // discarded_index
        return type == DataType::kINT32;
    }
    return false;
}

int32_t AccmTokenTopK::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != getNbOutputs() || mK < 1)
    {
        return -1;
    }
    int64_t const maxN = in[kScores].max.d[1];
    int64_t const minN = in[kScores].min.d[1];
    if (maxN > kMaxTokens || (minN >= 0 && minN < mK))
    {
        return -1; // N outside [k, kMaxTokens] for some shape in the profile
    }
    return 0;
}

size_t AccmTokenTopK::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0; // the index outputs double as the gather's index buffers
}

int32_t AccmTokenTopK::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    if (nbInputs != kNbInputs || in[kScores].dims.d[1] < mK || in[kScores].dims.d[1] > kMaxTokens)
    {
        return -1;
    }
    return 0;
}

int32_t AccmTokenTopK::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    auto const batch = static_cast<int32_t>(inputDesc[kScores].dims.d[0]);
    auto const n = static_cast<int32_t>(inputDesc[kScores].dims.d[1]);
    auto const dim = static_cast<int32_t>(inputDesc[kTokens].dims.d[2]);
    if (n < mK || inputDesc[kTokens].dims.d[1] != n)
    {
        return -1;
    }
    auto* keptIndex = static_cast<int32_t*>(outputs[1]);
    auto* discardedIndex = mEmitDiscarded ? static_cast<int32_t*>(outputs[3]) : nullptr;
    if (launchTokenSelect(elementType(inputDesc[kScores].type), inputs[kScores], batch, n, mK, keptIndex,
            discardedIndex, stream)
        != cudaSuccess)
    {
        return -1;
    }
    ElementType const tokens = elementType(inputDesc[kTokens].type);
    if (launchTokenGather(tokens, inputs[kTokens], batch, n, dim, keptIndex, mK, outputs[0], stream) != cudaSuccess)
    {
        return -1;
    }
    if (mEmitDiscarded
        && launchTokenGather(tokens, inputs[kTokens], batch, n, dim, discardedIndex, n - mK, outputs[2], stream)
            != cudaSuccess)
    {
        return -1;
    }
    return 0;
}

IPluginV3* AccmTokenTopK::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* AccmTokenTopK::getFieldsToSerialize() noexcept
{
    return &mFieldCollection;
}

AccmTokenTopKCreator::AccmTokenTopKCreator()
{
    mAttributes.emplace_back("k", nullptr, PluginFieldType::kINT32, 1);
    mAttributes.emplace_back("emit_discarded", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.nbFields = static_cast<int32_t>(mAttributes.size());
    mFieldNames.fields = mAttributes.data();
}

char const* AccmTokenTopKCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* AccmTokenTopKCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* AccmTokenTopKCreator::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

PluginFieldCollection const* AccmTokenTopKCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

IPluginV3* AccmTokenTopKCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        int32_t k = -1;
        int32_t emitDiscarded = 0;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (std::strcmp(field.name, "k") == 0 && !readInt(field, k))
            {
                return nullptr;
            }
            if (std::strcmp(field.name, "emit_discarded") == 0 && !readInt(field, emitDiscarded))
            {
                return nullptr;
            }
        }
        if (k < 1)
        {
            return nullptr;
        }
        return new AccmTokenTopK(k, emitDiscarded, mNamespace);
    }
    catch (std::exception const&)
    {
        return nullptr;
    }
}

REGISTER_TENSORRT_PLUGIN(AccmTokenTopKCreator);

} // namespace accm
